# Sourced by the setup scripts: install Debian packages unless the commands they bring exist.
# usage: apt_install "COMMAND ..." PACKAGE ...    Idempotent; uses sudo when not root.

apt_install() {
    local commands=$1 missing="" sudo=""
    shift
    for command in $commands; do
        command -v "$command" >/dev/null || missing="$missing $command"
    done
    if [ -z "$missing" ]; then
        echo "setup: $commands already installed"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "$@"
    for command in $commands; do
        command -v "$command"
    done
}
