#!/bin/sh
# build-emoji-dataset.sh — rebuild data/emoji32.bin, the pretraining set of the
# built-in tiny model, from the npm packages emoji-datasource-google (Apache-2.0)
# and emoji-datasource-twitter (CC-BY-4.0). Needs npm, tar, a C compiler and
# libstb-dev. The packs are downloaded into a temporary folder and deleted after.
#
#   tools/build-emoji-dataset.sh [OUT] [--size 32] [--margin 4] [--categories "A,B,..."]
#
# OUT defaults to data/emoji32.bin; data/emoji32-preview.png shows a sample.
# Categories (emoji.json's "category"): Smileys & Emotion, People & Body,
# Animals & Nature, Food & Drink, Travel & Places, Activities, Objects, Symbols, Flags.
set -eu

cd "$(dirname "$0")/.."
OUT=data/emoji32.bin
case "${1:-}" in ''|-*) ;; *) OUT=$1; shift ;; esac
VERSION=${EMOJI_DATASOURCE_VERSION:-16.0.0}

for tool in npm tar cc pkg-config; do
    command -v "$tool" >/dev/null || { echo "build-emoji-dataset: '$tool' is missing" >&2; exit 1; }
done
[ -f /usr/include/stb/stb_image.h ] || { echo "build-emoji-dataset: libstb-dev is missing (make deps)" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM

echo "build-emoji-dataset: compiling the helper" >&2
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-format-truncation -Isrc $(pkg-config --cflags stb) \
   -o "$TMP/emoji_dataset" tools/emoji_dataset.c src/formats/json.c src/core/fsutil.c -lm

ARGS=""
for set in google twitter; do
    echo "build-emoji-dataset: npm pack emoji-datasource-$set@$VERSION" >&2
    (cd "$TMP" && npm pack --silent "emoji-datasource-$set@$VERSION" >/dev/null)
    mkdir -p "$TMP/$set"
    tar xzf "$TMP/emoji-datasource-$set-$VERSION.tgz" -C "$TMP/$set" \
        package/emoji.json package/LICENSE "package/img/$set/64"
    rm -f "$TMP/emoji-datasource-$set-$VERSION.tgz"
    ARGS="$ARGS $TMP/$set/package $set"
done

mkdir -p "$(dirname "$OUT")"
# shellcheck disable=SC2086
"$TMP/emoji_dataset" --out "$OUT" --preview "${OUT%.bin}-preview.png" "$@" $ARGS
