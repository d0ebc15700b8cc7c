#!/bin/sh
# Rebuild models/demo/: the demo subject, OpenMoji's cat (CC BY-SA 4.0) in four
# expressions, 48x48 centred on a 64x64 white square (the built-in model was
# pretrained on emoji filling 24 of 32 pixels: the same proportion). Needs npm
# and rsvg-convert (librsvg2-bin). The emoji pack is downloaded to a temp
# folder and never committed.
set -eu
out=${1:-models/demo}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent openmoji@17.0.0 >/dev/null && tar xzf openmoji-17.0.0.tgz)
mkdir -p "$out"
i=1
# grinning cat, grinning cat with smiling eyes, smiling cat with heart-eyes,
# cat with wry smile: one subject, four expressions
for hex in 1F63A 1F638 1F63B 1F63C; do
  rsvg-convert -w 48 -h 48 --page-width 64 --page-height 64 --left 8 --top 8 -b white \
    "$tmp/package/color/svg/$hex.svg" -o "$out/subject$i.png"
  i=$((i + 1))
done
echo "wrote $out/subject1..4.png"
# the README's picture of the subject (ImageMagick, when installed)
if command -v convert >/dev/null 2>&1 && [ "$out" = models/demo ]; then
  convert models/demo/subject1.png models/demo/subject2.png models/demo/subject3.png \
    models/demo/subject4.png +append docs/demo-subject.png
  echo "wrote docs/demo-subject.png"
fi
