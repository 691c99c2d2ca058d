#!/bin/sh
# Install the noodle edge runner on a 64-bit Raspberry Pi: a virtual environment
# in .venv beside this script with the interpreter, numpy, Pillow and typer:
# exactly the files requirements-pi.txt pins by sha256, offline from wheels/
# when the bundle has it, else from the package index.
#
#   ./install.sh                         install; again only when something changed
#   ./install.sh --index                 from the package index even when wheels/ is here
#   ./install.sh --unpinned              the ranges in requirements-pi.in, unchecked, from the index
#                                        (a Python or machine the bundle pins nothing for)
#   ./install.sh --camera                also OpenCV, for --source (a USB camera, a video file);
#                                        later installs keep it, until ./install.sh --no-camera
#   ./install.sh --service 'ARGS'        and run `noodle-edge ARGS` at boot (systemd, via sudo);
#                                        'serve ... --host 0.0.0.0' gets a token in serve.token
#   ./install.sh --print-service 'ARGS'  print that unit and change nothing
#   ./install.sh --remove-service        stop it and remove the unit
#   PYTHON=python3.11 ./install.sh       another python3
#
# First of all, every file of the bundle (this script too) is checked against
# SHA256SUMS: one that differs is refused by name, before anything runs.
# A failure is one line `error: ...`, exit 2, and leaves .venv as it was: the
# new environment is built in .venv-XXXXXX and switched in by replacing the
# .venv symlink, which is atomic (renaming the folder would break the paths
# a venv records, such as .venv/bin/pip's).
set -eu
# A pipe fails when any of its commands does, where this sh knows how (dash
# does not: the pipes below are ones whose failure a later check catches).
if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

fail() {
    echo "error: install.sh: $*" >&2
    exit 2
}

# Every file against SHA256SUMS, this script included: the check reads the whole
# file, so a byte changed anywhere in it is seen, unless the change removes this
# check itself; only the tarball's sha256 covers that (README-PI.md). Fail closed:
# go on only when sha256sum says every file matches.
SUMS=SHA256SUMS
[ -f "$SUMS" ] ||
    fail "$SUMS: missing, so this bundle cannot be checked (it is incomplete, or older than the list); copy it again, or make it again with \`noodle bundle\`"
command -v sha256sum >/dev/null ||
    fail "sha256sum not found, so the bundle cannot be checked; sudo apt install coreutils"
# Each line as `noodle bundle` writes it (edge/integrity.py's LINE), and at least one.
if [ ! -s "$SUMS" ] || LC_ALL=C grep -qvE '^[0-9a-f]{64}  [A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$' "$SUMS"; then
    fail "$SUMS: a line is not '<sha256>  <file>', so the list was altered or damaged; copy the bundle again from the tarball, checking its sha256"
fi
if ! differs=$(LC_ALL=C sha256sum --check --quiet --strict "$SUMS" 2>/dev/null); then
    bad=$(printf '%s\n' "$differs" | sed -n '1s/: FAILED.*$//p')
    [ -n "$bad" ] ||
        fail "$SUMS: sha256sum cannot read it; copy the bundle again from the tarball, checking its sha256"
    [ -f "$bad" ] ||
        fail "$bad: missing, though $SUMS lists it; the bundle is incomplete: copy it again from the tarball, checking its sha256"
    fail "$bad: differs from its sha256 in $SUMS, so it changed after \`noodle bundle\` made the bundle; copy the bundle again from the tarball, checking its sha256 (README-PI.md)"
fi
sums_sha256=$(sha256sum "$SUMS")
sums_sha256=${sums_sha256%% *}
PYTHON=${PYTHON:-python3}
# Free space the install needs here: the finished .venv is 104 MiB on Bookworm
# and 132 MiB on Trixie (measured by pi-check); pip's temporary copies and the
# bytecode written on first use need more while it runs.
NEED_MB=${NOODLE_NEED_MB:-300}
UNIT=noodle-edge.service
# `serve` beyond loopback as the service: the token it requires, made once, read by --token-file.
SERVE_TOKEN=serve.token
UNIT_DIR=${NOODLE_UNIT_DIR:-/etc/systemd/system}
LOG=.install.log
# noodle-edge's commands, each with every option it takes, as this bundle's edge/cli.py
# has them (written in by `noodle bundle`): --service and --print-service check the
# command against them, the same whether or not .venv exists yet.
COMMANDS='@COMMANDS@'

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
}

mode=install
service_args=""
use_index=0
unpinned=0
camera=""  # empty: as the installed .venv has it
while [ $# -gt 0 ]; do
    case "$1" in
        --index) use_index=1 ;;
        --unpinned) unpinned=1 ;;
        --camera) camera=1 ;;
        --no-camera) camera=0 ;;
        --service | --print-service)
            if [ $# -lt 2 ] || [ -z "$2" ]; then
                fail "$1 needs noodle-edge's arguments as one quoted word; e.g. $1 'camera model/@MODEL_FILE@ --picamera --json'"
            fi
            # A unit holds one line per setting: a newline (or any control character)
            # would end ExecStart early, or break the sed that fills the template in.
            case "$2" in
                *[[:cntrl:]]*) fail "$1: noodle-edge's arguments hold a newline, tab or other control character, which a systemd unit cannot take; give them on one line, e.g. $1 'camera model/@MODEL_FILE@ --picamera --json'" ;;
            esac
            mode=${1#--}
            service_args=$2
            shift ;;
        --remove-service) mode=remove-service ;;
        -h | --help) usage; exit 0 ;;
        *) fail "unknown option '$1'; see ./install.sh --help" ;;
    esac
    shift
done

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# The service runs as whoever installs it, also when that is done with sudo.
service_user() {
    if [ "$(id -u)" = 0 ] && [ -n "${SUDO_USER:-}" ]; then echo "$SUDO_USER"; else id -un; fi
}

# systemd expands % and $ in these settings; sed needs \ | & escaped.
unit_value() {
    printf '%s' "$1" | sed -e 's/%/%%/g' -e 's/\$/$$/g' -e 's/[\\|&]/\\&/g'
}

# Refuse a command noodle-edge does not have, an option it does not take, or one
# without the --strict the unit adds: such a unit would fail and restart forever.
check_command() {
    options=$(printf '%s\n' "$COMMANDS" | while read -r name rest; do
        if [ "$name" = "$1" ]; then echo " $rest "; fi
    done)
    [ -n "$options" ] ||
        fail "--$mode '$service_args': '$1' is not a noodle-edge command (it has $(printf '%s\n' "$COMMANDS" | cut -d ' ' -f 1 | tr '\n' ' ' | sed 's/ $//')); see ./noodle-edge --help"
    case "$options" in
        *" --strict "*) ;;
        *) fail "--$mode '$service_args': '$1' cannot run as the service, which adds --strict; run it by hand: ./noodle-edge $1 --help" ;;
    esac
    command=$1
    shift
    for arg in "$@"; do
        case "$arg" in
            --) break ;;
            --?*) option=${arg%%=*} ;;
            -[a-zA-Z]*) option=$(printf '%s' "$arg" | cut -c 1-2) ;;
            *) continue ;;
        esac
        case "$options" in
            *" $option "*) ;;
            *) fail "--$mode '$service_args': '$option' is not an option of noodle-edge $command; see ./noodle-edge $command --help" ;;
        esac
    done
}

# The unit for `noodle-edge $service_args`, refused when it names no model file that exists.
render_unit() {
    set -f
    # shellcheck disable=SC2086  # split the arguments as the user wrote them, without globbing
    set -- $service_args
    set +f
    model=""
    for arg in "$@"; do
        case "$arg" in *.tflite) model=$arg; break ;; esac
    done
    [ -n "$model" ] ||
        fail "--service '$service_args' names no .tflite model; e.g. --service 'camera model/@MODEL_FILE@ --picamera --json'"
    case "$model" in /*) path=$model ;; *) path=$here/$model ;; esac
    [ -f "$path" ] || fail "$model: no such model for the service; this bundle's is model/@MODEL_FILE@"
    check_command "$@"
    sed -e "s|@DIR@|$(unit_value "$here")|g" -e "s|@USER@|$(unit_value "$(service_user)")|g" \
        -e "s|@ARGS@|$(unit_value "$service_args")|g" noodle-edge.service
}

# The value of option $1 in the service's arguments (--port 80 or --port=80), else $2.
service_option() {
    name=$1 value=$2
    set -f
    # shellcheck disable=SC2086  # the arguments as the user wrote them, as the unit splits them
    set -- $service_args
    set +f
    while [ $# -gt 0 ]; do
        case "$1" in
            "$name") if [ $# -ge 2 ]; then value=$2; shift; fi ;;
            "$name"=*) value=${1#*=} ;;
        esac
        shift
    done
    printf '%s\n' "$value"
}

is_serve() {
    case " $service_args " in " serve "*) return 0 ;; *) return 1 ;; esac
}

# `serve` listening beyond loopback must have a token: without one given, the service reads
# serve.token, made here once (48 hex digits, readable by the service's user only).
serve_token() {
    is_serve || return 0
    case "$(service_option --host 127.0.0.1)" in 127.* | localhost | ::1 | "[::1]") return 0 ;; esac
    case " $service_args " in
        *" --token-file "* | *" --token-file="*) return 0 ;;
        *" --token "* | *" --token="*)
            echo "warning: install.sh: --token in the service is readable in its unit and in ps; --token-file is not" >&2
            return 0 ;;
    esac
    service_args="$service_args --token-file $SERVE_TOKEN"
    [ "$mode" = service ] && [ ! -s "$SERVE_TOKEN" ] || return 0
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$SERVE_TOKEN.tmp" && echo >>"$SERVE_TOKEN.tmp") ||
        fail "cannot write $SERVE_TOKEN here (a full disk, or no write permission); free some space"
    if [ "$(id -u)" = 0 ]; then chown "$(service_user)" "$SERVE_TOKEN.tmp"; fi
    mv -f "$SERVE_TOKEN.tmp" "$SERVE_TOKEN"
    echo "made $SERVE_TOKEN: the token serve asks of every client beyond this Pi"
}

# Where to open `serve`'s page, said once it runs.
serve_url() {
    is_serve || return 0
    host=$(service_option --host 127.0.0.1)
    port=$(service_option --port @PORT@)
    case "$host" in 0.0.0.0 | :: | "[::]" | "") host="$(hostname).local" ;; esac
    case "$host" in *:*) case "$host" in "["*) ;; *) host="[$host]" ;; esac ;; esac
    token=$(service_option --token-file "")
    if [ -n "$token" ]; then
        echo "open http://$host:$port/?token=TOKEN once in a browser (TOKEN: cat $token); the API takes it as Authorization: Bearer TOKEN"
    else
        echo "open http://$host:$port/ in a browser on this Pi"
    fi
}

install_service() {
    command -v systemctl >/dev/null || fail "systemctl not found; --service needs systemd, as Raspberry Pi OS has"
    printf '%s\n' "$unit" >"$LOG.unit"
    as_root mkdir -p "$UNIT_DIR"
    as_root cp "$LOG.unit" "$UNIT_DIR/.$UNIT.tmp"
    as_root mv -f "$UNIT_DIR/.$UNIT.tmp" "$UNIT_DIR/$UNIT"
    rm -f "$LOG.unit"
    as_root systemctl daemon-reload
    as_root systemctl enable "$UNIT"
    as_root systemctl restart "$UNIT"
    echo "$UNIT enabled and started as $(service_user): noodle-edge $service_args"
    echo "watch it: journalctl -u noodle-edge -f; remove it: ./install.sh --remove-service"
    serve_url
}

remove_service() {
    if [ ! -f "$UNIT_DIR/$UNIT" ]; then
        echo "no $UNIT in $UNIT_DIR; nothing to remove"
        return
    fi
    command -v systemctl >/dev/null || fail "systemctl not found; delete $UNIT_DIR/$UNIT by hand"
    as_root systemctl disable --now "$UNIT" || echo "warning: systemctl disable failed; removing the unit anyway" >&2
    as_root rm -f "$UNIT_DIR/$UNIT"
    as_root systemctl daemon-reload
    echo "removed $UNIT"
}

case "$mode" in
    remove-service) remove_service; exit 0 ;;
    print-service) serve_token; render_unit; exit 0 ;;
    service) serve_token; unit=$(render_unit) ;;
esac
echo "checked: every file matches $SUMS (its sha256 $sums_sha256, which \`noodle bundle\` printed)"

# 64-bit only. A Pi 4 or 5 running 32-bit Raspberry Pi OS boots a 64-bit
# kernel, so uname says aarch64 while every program is 32-bit: ask getconf too.
arch=$(uname -m)
bits=$(getconf LONG_BIT 2>/dev/null || echo 64)
case "$arch" in armv6l | armv7l | armv8l | armhf | arm) bits=32 ;; esac
[ "$bits" != 32 ] ||
    fail "32-bit ARM system ($arch, 32-bit programs); tflite-runtime and ai-edge-litert ship 64-bit wheels only: install 64-bit Raspberry Pi OS (Pi 3, 4, 5, Zero 2 W)"

pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
    fail "$PYTHON not found; sudo apt install python3"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    fail "$PYTHON is Python $pyver; noodle-edge needs 3.10 or newer (Raspberry Pi OS Bookworm or Trixie)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
    fail "$PYTHON (Python $pyver) cannot make a virtual environment, its venv module is missing; sudo apt install python3-venv"

# OpenCV (--camera) is kept as the installed .venv has it, unless asked otherwise.
if [ -z "$camera" ]; then
    if [ -f .venv/.noodle-camera ]; then camera=1; else camera=0; fi
fi
pins_python() {
    [ -f "$1" ] && [ "$arch" = aarch64 ] && grep -q "python_version == \"$pyver\"" "$1"
}

# Where the packages come from: pinned wheels when this Python and machine have them.
pinned=0
if pins_python requirements-pi.txt && { [ "$camera" = 0 ] || pins_python requirements-camera.txt; }; then
    pinned=1
fi
if [ "$unpinned" = 1 ]; then
    source="the package index, unpinned"
    set -- -r requirements-pi.in
elif [ -d wheels ] && [ "$use_index" = 0 ]; then
    if [ "$pinned" = 0 ] && pins_python requirements-pi.txt; then
        fail "--camera: this bundle's wheels/ holds no OpenCV for Python $pyver (it was made before --camera, or altered); make it again with \`noodle bundle\`, or ./install.sh --camera --index"
    fi
    if [ "$pinned" = 0 ]; then
        have=$(sed -n 's/.*python_version == "\([0-9.]*\)".*/\1/p' requirements-pi.txt 2>/dev/null | sort -u | tr '\n' ' ' || true)
        fail "wheels/ holds aarch64 wheels for Python ${have:-none}only, not for Python $pyver on $arch; install from the package index: ./install.sh --index"
    fi
    source="wheels/ (offline)"
    set -- --no-index --find-links wheels --require-hashes -r requirements-pi.txt
elif [ "$pinned" = 1 ]; then
    source="the package index, pinned by sha256"
    set -- --require-hashes -r requirements-pi.txt
else
    # No ranges from the index unless asked: requirements-pi.in is not pinned by sha256.
    have=$(sed -n 's/.*python_version == "\([0-9.]*\)".*/\1/p' requirements-pi.txt 2>/dev/null | sort -u | tr '\n' ' ' || true)
    fail "this bundle pins wheels for Python ${have:-none}on aarch64 only, not for Python $pyver on $arch (or not OpenCV for --camera); ./install.sh --unpinned installs the ranges of requirements-pi.in from the package index, unchecked"
fi
if [ "$camera" = 1 ]; then
    # Pinned beside the runner's own pins, so OpenCV comes with the numpy the runtime needs.
    if [ "$unpinned" = 1 ]; then set -- "$@" -r requirements-camera.in; else set -- "$@" -r requirements-camera.txt; fi
    source="$source, with OpenCV"
fi

# picamera2 comes from apt (python3-picamera2), not pip: let the venv see the
# system's packages when it is there, so --picamera works.
system_site=""
if "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("picamera2") is None)' 2>/dev/null; then
    system_site="--system-site-packages"
fi

# Those of the four files this bundle has (one without wheels/ has no .txt): a cat of a missing
# one would fail the pipe, and with pipefail (Trixie's dash has it) end the script without a word.
requirements=$(for f in requirements-pi.txt requirements-pi.in requirements-camera.txt requirements-camera.in; do
    if [ -f "$f" ]; then cat "$f"; fi
done | sha256sum)
full=$("$PYTHON" -c 'import platform; print(platform.python_version())')
stamp="$(command -v "$PYTHON") $full; $source; ${system_site:-isolated}; requirements ${requirements%% *}"

free_mb() {
    df -Pk . | { read -r _; read -r _ _ _ avail _; echo $((avail / 1024)); }
}

# Python, machine, runtime and numpy as the environment in $1 sees them.
describe() {
    PYTHONPATH="$here" "$1/bin/python" -c '
import platform
from edge.runtime import find_runtime, package_version
name = find_runtime()[0]
opencv = package_version("opencv-python-headless")
print("Python", platform.python_version(), platform.machine() + ",", name, package_version(name) + ",",
      "numpy", package_version("numpy") + (", opencv-python-headless " + opencv if opencv else ""))'
}

if [ -L .venv ] && [ -f .venv/.noodle-installed ] && [ "$(cat .venv/.noodle-installed)" = "$stamp" ] &&
    found=$(describe .venv 2>/dev/null); then
    echo "up to date: .venv has $found from $source"
else
    free=$(free_mb)
    [ "$free" -ge "$NEED_MB" ] ||
        fail "no space left: $free MB free in $here, the install needs about $NEED_MB MB; free some (sudo apt clean, old bundles) or unpack the bundle on a bigger disk"

    venv=$(mktemp -d .venv-XXXXXX)
    trap 'rm -rf "$here/$venv"' EXIT
    trap 'exit 2' INT TERM HUP
    : >"$LOG"
    # step WHAT COMMAND...: run COMMAND into the log; on failure, one line that says why.
    step() {
        what=$1
        shift
        "$@" >>"$LOG" 2>&1 && return
        # A full disk may not even let the log say so: look at the disk too.
        if grep -q "No space left on device" "$LOG" || [ "$(free_mb)" -lt 2 ]; then
            fail "no space left on device while $what; free some space (sudo apt clean) and run ./install.sh again"
        fi
        missing=$(sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' "$LOG" | head -n 1 || true)
        [ -z "$missing" ] || [ "$source" != "wheels/ (offline)" ] ||
            fail "wheels/ has no wheel of $missing for Python $pyver on $arch, so the bundle is incomplete; copy it again, or ./install.sh --index"
        [ -z "$missing" ] ||
            fail "the package index has no $missing for Python $pyver on $arch, or cannot be reached; check the network"
        grep -q "DO NOT MATCH THE HASHES" "$LOG" &&
            fail "a file in wheels/ differs from its sha256 in requirements-pi.txt (a damaged copy); copy the bundle again"
        grep -q "Hashes are required in --require-hashes mode" "$LOG" &&
            fail "requirements-pi.txt: a package has no --hash=sha256 line, so the bundle was altered (noodle bundle pins every wheel); copy the bundle again, checking its sha256"
        grep -q "Can't verify hashes for these" "$LOG" &&
            fail "requirements-pi.txt: a requirement is a local folder or file, not a wheel pinned by sha256, so the bundle was altered (noodle bundle pins every wheel); copy the bundle again, checking its sha256"
        grep -q "must have their versions pinned with ==" "$LOG" &&
            fail "requirements-pi.txt: a package is not pinned with ==, so the bundle was altered (noodle bundle pins every wheel); copy the bundle again, checking its sha256"
        fail "$what failed: $(grep -v '^[[:space:]]*$' "$LOG" | tail -n 1); the whole story is in $here/$LOG"
    }
    # shellcheck disable=SC2086  # $system_site is one option or none
    step "making the virtual environment" "$PYTHON" -m venv $system_site "$venv"
    # --no-compile: Python compiles what the runner imports on first use, instead
    # of every module of numpy and the runtime (their tests included) now.
    step "installing from $source" "$venv/bin/python" -m pip install --disable-pip-version-check \
        --no-input --quiet --no-compile "$@"
    found=$(describe "$venv" 2>>"$LOG") ||
        fail "the installed runtime does not load: $(tail -n 1 "$LOG"); see $here/$LOG"
    printf '%s\n' "$stamp" >"$venv/.noodle-installed"
    if [ "$camera" = 1 ]; then : >"$venv/.noodle-camera"; fi
    chmod 755 "$venv"  # mktemp made it private
    if [ "$(id -u)" = 0 ] && [ -n "${SUDO_USER:-}" ]; then
        chown -R "$SUDO_USER:" "$venv" 2>/dev/null || fail "cannot give .venv to $SUDO_USER (SUDO_USER); run it as that user"
    fi
    old=$(readlink .venv 2>/dev/null || true)
    case "$old" in .venv-??????) ;; *) old="" ;; esac  # only ever delete what install.sh made
    if [ -d .venv ] && [ ! -L .venv ]; then  # made in place by an older install.sh
        old=$(mktemp -d .venv-old-XXXXXX)
        mv .venv "$old/"
    fi
    ln -s "$venv" ".venv.new-$$"
    "$PYTHON" -c 'import os, sys; os.replace(sys.argv[1], sys.argv[2])' ".venv.new-$$" .venv
    trap - EXIT INT TERM HUP
    rm -rf "$old"
    for stale in .venv-??????; do  # left by an install that was killed
        if [ -d "$stale" ] && [ "$stale" != "$venv" ]; then rm -rf "$stale"; fi
    done
    echo "installed .venv: $found from $source"
fi

if [ "$mode" = service ]; then
    install_service
else
    echo "try: ./noodle-edge classify model/@MODEL_FILE@ photo.jpg"
fi
