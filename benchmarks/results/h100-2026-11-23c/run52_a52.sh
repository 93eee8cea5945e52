R=$1
export TRITON_CACHE_DIR=/tmp/tcache
for c in 1 2; do
  echo "== sanitizer tmwhbv case $c"
  timeout 120 /usr/local/cuda/bin/compute-sanitizer --print-limit 2 python3 .gpuwork/one.py tmwhbv $c 2>&1 | grep -v "^Traceback\|^  File\|^    " | head -40
done
mkdir -p $R/cache
for f in $(grep -l "_split_kernel_tm" -r /tmp/tcache --include=*.json | head -4); do d=$(dirname $f); cp $d/*.ptx $d/*.json $d/*.cubin $R/cache/ 2>/dev/null; done
ls $R/cache | head
