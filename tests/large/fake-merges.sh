#!/bin/sh
# tests/large/fake-merges.sh OUT — a fake CLIP BPE merges file, so that the large
# test needs no download: the "#version: 0.2" header line, then 48,894 merges of
# lower-case letters (as many as CLIP's bpe_simple_vocab_16e6 uses), each making
# a new token: "x y</w>" and "x y" for every letter pair, then "xy z</w>" and
# "xy z" for every triple, then "xyz w</w>" until the count is reached. With
# tok_create_clip's numbering (256 byte tokens, the same with </w>, one token per
# merge, then <|startoftext|> and <|endoftext|>) that is CLIP's 49,408 ids, BOS
# 49406 and EOS 49407, as the real vocabulary: any id fits the real token
# embedding. Short words become one token ("dog</w>"), longer ones a few. Not
# CLIP's vocabulary: the ids of a prompt differ from the real ones.
set -eu
out=${1:?usage: fake-merges.sh OUT}
awk 'BEGIN {
    max = 48894; n = 0
    for (i = 0; i < 26; i++) L[i] = sprintf("%c", 97 + i)
    print "#version: 0.2"
    for (i = 0; i < 26; i++) for (j = 0; j < 26; j++) {
        print L[i] " " L[j] "</w>"; print L[i] " " L[j]; n += 2
    }
    for (i = 0; i < 26; i++) for (j = 0; j < 26; j++) for (k = 0; k < 26; k++) {
        print L[i] L[j] " " L[k] "</w>"; print L[i] L[j] " " L[k]; n += 2
    }
    for (i = 0; i < 26; i++) for (j = 0; j < 26; j++) for (k = 0; k < 26; k++)
        for (l = 0; l < 26; l++) {
            if (n >= max) exit
            print L[i] L[j] L[k] " " L[l] "</w>"; n++
        }
}' > "$out.tmp.$$"
mv "$out.tmp.$$" "$out"
