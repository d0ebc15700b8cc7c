#!/bin/sh
# Install the Debian packages given as arguments that are not installed yet.
# Uses sudo when not root. Prints nothing when everything is present.
missing=""
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "krona-studio: installing Debian packages:$missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null ||
  { echo "krona-studio: could not install:$missing (run as root or install them by hand)" >&2; exit 1; }
