# Sourced at the start of a device call: unpacks the carried binaries (.devbin, built here with
# `--features cuda`), points the tests' baked-in paths at this checkout, sets the CUDA libraries.
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
export PYTHONUNBUFFERED=1
B=$PWD/.devbin
for f in "$B"/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
for f in "$B"/*.xz; do [ -e "$f" ] || continue
  python3 -c 'import lzma,sys; open(sys.argv[1][:-3],"wb").write(lzma.decompress(open(sys.argv[1],"rb").read()))' "$f" && rm -f "$f"
done
chmod +x "$B"/* 2>/dev/null
mkdir -p /work /work/shared/fixtures
[ -e /work/main ] || ln -s "$PWD" /work/main
cp .devdata/fixtures/* /work/shared/fixtures/ 2>/dev/null
OUT=${OUT:-/tmp/out}
