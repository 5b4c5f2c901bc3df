#!/usr/bin/env bash
# Builds the Debian package from the binary `cargo test` already built (the dev profile: this
# checks the packaging, not the optimiser), installs it on this machine with dpkg, checks what
# the postinst did (the system user, the settings file's owner and mode, no server started on
# the development secret), serves with the installed binary as the service would (its user,
# its settings file, a real secret, a fresh database) until /readyz answers with the build's
# version, verifies the unit with systemd-analyze where it exists, then purges the package.
# Run by .ci/run; needs root (dpkg), curl and cargo-deb.
set -euo pipefail
cd "$(dirname "$0")/../.."

deb=$(timeout 600 cargo deb -p ringline-server --no-build --profile dev --no-strip --quiet --output target/debian/ 2>&1 | tail -n 1)
[ -f "$deb" ] || { echo "cargo deb made no package: $deb"; exit 1; }
echo "built $deb"
dpkg-deb --info "$deb" | grep -E '^ (Package|Version|Depends):'
contents=$(dpkg-deb --contents "$deb")
for path in ./usr/bin/ringline ./lib/systemd/system/ringline.service ./etc/ringline/ringline.env; do
  grep -q " $path\$" <<<"$contents" || { echo "the package lacks $path"; exit 1; }
done

cleanup() { pkill -f '^/usr/bin/ringline serve' 2>/dev/null || true; dpkg --purge ringline >/dev/null 2>&1 || true; rm -rf "$workdir"; }
workdir=$(mktemp -d)
chmod 755 "$workdir"  # the ringline user reaches its state directory inside
trap cleanup EXIT
dpkg -i "$deb" >"$workdir/install.log" 2>&1 || { cat "$workdir/install.log"; exit 1; }
cat "$workdir/install.log"
getent passwd ringline >/dev/null || { echo "postinst made no ringline user"; exit 1; }
[ "$(stat -c '%U:%G %a' /etc/ringline/ringline.env)" = "root:ringline 640" ] || { stat /etc/ringline/ringline.env; exit 1; }
if grep -Eq '^RINGLINE_JWT_SECRET=' /etc/ringline/ringline.env; then echo "the settings file holds a secret"; exit 1; fi
if pgrep -f '^/usr/bin/ringline' >/dev/null; then echo "postinst started a server without a secret"; exit 1; fi
/usr/bin/ringline --version | grep -Eq '^ringline [0-9]+\.[0-9]+\.[0-9]+ \(' || { /usr/bin/ringline --version; exit 1; }

if command -v systemd-analyze >/dev/null 2>&1; then
  # Checks the unit's syntax and that its executables exist (no running systemd needed).
  systemd-analyze verify /lib/systemd/system/ringline.service
fi

# As the service: its user, its settings file, plus a secret, a free port and a fresh database.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
install -d -o ringline -g ringline "$workdir/state"
settings=$(grep -Ev '^(#|$)' /etc/ringline/ringline.env | xargs)
secret=$(head -c 24 /dev/urandom | base64)
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin $settings RINGLINE_JWT_SECRET="ringline-package-test-$secret" \
  RINGLINE_BIND="127.0.0.1:$port" RINGLINE_DATABASE_URL="sqlite://$workdir/state/ringline.db?mode=rwc" \
  runuser -u ringline -- /usr/bin/ringline check-config --quiet
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin $settings RINGLINE_JWT_SECRET="ringline-package-test-$secret" \
  RINGLINE_BIND="127.0.0.1:$port" RINGLINE_DATABASE_URL="sqlite://$workdir/state/ringline.db?mode=rwc" \
  runuser -u ringline -- /usr/bin/ringline serve >"$workdir/serve.log" 2>&1 &
for _ in $(seq 1 100); do
  ready=$(curl -fsS "http://127.0.0.1:$port/readyz" 2>/dev/null) && break
  sleep 0.1
done
[ -n "${ready:-}" ] || { cat "$workdir/serve.log"; echo "the installed server never became ready"; exit 1; }
echo "readyz: $ready"
grep -q '"version"' <<<"$ready" || { echo "/readyz does not say the version"; exit 1; }
echo "the package installs, and its binary serves as the service would"
