#!/usr/bin/env bash
# Installs Google's Pub/Sub emulator (tests/test_streaming.py runs against
# it) when it is missing and apt-get can install it; otherwise says why and
# goes on: the streaming end-to-end test then skips, naming the packages.
# Idempotent and quick: with the emulator present it only checks two paths.
set -uo pipefail
emulator_present() {
  local gcloud
  gcloud=$(command -v gcloud) || return 1
  command -v java >/dev/null || return 1
  [ -d "$(dirname "$(dirname "$(readlink -f "$gcloud")")")/platform/pubsub-emulator" ]
}
emulator_present && exit 0
packages=(google-cloud-cli google-cloud-cli-pubsub-emulator openjdk-17-jre-headless)
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo -n)
if command -v apt-get >/dev/null &&
   "${sudo[@]}" apt-get update -q >/dev/null &&
   "${sudo[@]}" apt-get install -y -q "${packages[@]}" >/dev/null; then
  emulator_present && exit 0
fi
echo "warning: could not install the Pub/Sub emulator (${packages[*]});" \
     "the streaming end-to-end test will be skipped" >&2
