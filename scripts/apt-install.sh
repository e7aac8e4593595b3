# Sourced by the install scripts: apt_install PACKAGE… installs Debian
# packages after one `apt-get update`, without starting their services (the
# usual policy-rc.d convention: servers are installed for their binaries).
apt_install() {
    [ $# -gt 0 ] || return 0
    local sudo="" added_policy=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
    [ -z "$added_policy" ] || $sudo rm -f /usr/sbin/policy-rc.d
}
