#!/bin/sh
# Rebuild models/demo/: the demo subject (OpenMoji's dog designs, CC BY-SA 4.0)
# rendered to 64x64 PNGs on white. Needs npm and rsvg-convert (librsvg2-bin).
# The raw emoji pack is downloaded to a temp folder and never committed.
set -eu
out=${1:-models/demo}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent openmoji@17.0.0 >/dev/null && tar xzf openmoji-17.0.0.tgz)
mkdir -p "$out"
i=1
# dog face, dog, guide dog, service dog: one subject, four poses
for hex in 1F436 1F415 1F9AE 1F415-200D-1F9BA; do
  rsvg-convert -w 64 -h 64 -b white "$tmp/package/color/svg/$hex.svg" -o "$out/subject$i.png"
  i=$((i + 1))
done
echo "wrote $out/subject1..4.png"
