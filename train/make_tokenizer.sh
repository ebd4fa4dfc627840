#!/bin/sh
# Trains models/tiny/tokenizer.model (SentencePiece BPE, 4096 pieces) on the prepared training text.
# Needs spm_train (Debian: apt-get install sentencepiece). Deterministic: the same input gives a
# byte-identical model (no sampling or shuffling of the input, one thread).
#   ids: 0 <unk>, 1 <s> (bos), 2 </s> (eos), 3..258 the byte pieces <0x00>..<0xFF>, no pad.
#   byte_fallback: any UTF-8 text encodes (a newline is the byte piece <0x0A>).
#   identity normalization, no whitespace collapsing: decode(encode(text)) == text for any text.
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gzip -dc train/data/brown_train.txt.gz > "$tmp/train.txt"
# relative paths: the model records its trainer options, so a temporary folder's name must not leak in
(cd "$tmp" && spm_train --input=train.txt --model_prefix=tokenizer \
  --vocab_size=4096 --model_type=bpe --byte_fallback=true --character_coverage=1.0 \
  --normalization_rule_name=identity --remove_extra_whitespaces=false --split_digits=true \
  --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 \
  --input_sentence_size=0 --shuffle_input_sentence=false --max_sentence_length=100000 \
  --num_threads=1 > log.txt 2>&1) || { cat "$tmp/log.txt"; exit 1; }
mkdir -p models/tiny
cp "$tmp/tokenizer.model" models/tiny/tokenizer.model
echo "wrote models/tiny/tokenizer.model ($(wc -c < models/tiny/tokenizer.model) bytes)"
