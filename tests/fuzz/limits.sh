# limits.sh — sourced by run-fuzz.sh and run-long.sh: the memory limits of one harness.
# -rss_limit_mb: a parser must not take 2 GB because a header says so. -malloc_limit_mb (one
# allocation; libFuzzer's default is the RSS limit) is raised for hdf5 alone: libhdf5 sizes
# some of its own buffers from 32-bit fields of the file (an object header's chunk, a chunk
# record) before it reads them, so a damaged file makes it ask for up to 4 GiB of address space,
# never touched: the read fails and zebra prints its one-line error (the real binary on such a
# file: 24 MB resident). Any larger single allocation, and every RSS overrun, still fails.
fz_limits() {
  case $1 in
    hdf5) echo "-rss_limit_mb=2048 -malloc_limit_mb=4097" ;;
    *) echo "-rss_limit_mb=2048" ;;
  esac
}
