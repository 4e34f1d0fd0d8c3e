# limits.sh — sourced by run-fuzz.sh and run-long.sh: the memory limits of one harness.
# fz_limits FORMAT: libFuzzer's flags. -rss_limit_mb: a parser must not take 2 GB because a
# header says so; one allocation of 2 GB or more fails too (libFuzzer's -malloc_limit_mb
# defaults to the RSS limit).
# fz_asan FORMAT: AddressSanitizer options. For hdf5 an allocation above 2 GB returns NULL, as on
# a machine that refuses it: libhdf5 sizes some of its own buffers from 32-bit fields of the file
# (an object header's chunk, a chunk record) before it reads them, so a damaged file makes it ask
# for up to 4 GiB of address space that it never touches (the real binary on such a file: 24 MB
# resident, one error line). Under ASan such an allocation writes 512 MB of shadow memory and
# takes 4.7 s, which cut the harness to 2-4 inputs per second; libhdf5 handles the NULL as an
# error. zebra's own allocations are bounded before they are made (core/ckpt_read.c).
fz_limits() { echo "-rss_limit_mb=2048"; }
fz_asan() {
  case $1 in
    hdf5) echo "allocator_may_return_null=1:max_allocation_size_mb=2048" ;;
    *) echo "" ;;
  esac
}
