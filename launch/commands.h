/* commands.h — the driver's subcommands. Each lives in launch/cmd_<name>.c, takes the
 * arguments after the subcommand name (argv[0] is the subcommand) and returns a zb status;
 * on failure it has recorded a one-line message with zb_fail(). */
#ifndef ZB_COMMANDS_H
#define ZB_COMMANDS_H

#include <stdint.h>

int zb_cmd_import(int argc, char **argv);
int zb_cmd_export(int argc, char **argv);
int zb_cmd_tokenize(int argc, char **argv);
int zb_cmd_dump(int argc, char **argv);
int zb_cmd_generate(int argc, char **argv);
int zb_cmd_info(int argc, char **argv);
int zb_cmd_plan(int argc, char **argv);
int zb_cmd_init(int argc, char **argv);
int zb_cmd_compose(int argc, char **argv);
int zb_cmd_smart(int argc, char **argv);
int zb_cmd_bench(int argc, char **argv);
int zb_cmd_eval(int argc, char **argv);
int zb_cmd_data(int argc, char **argv);
int zb_cmd_train(int argc, char **argv);
int zb_cmd_plot(int argc, char **argv);

/* The plan JSON of `zebra compose --plan` (written by `zebra smart`): its "mla_layers" become
 * MLA in c->kinds, every other layer of c Mamba2 (cmd_compose.c; the fuzz harness calls it). */
#include "config.h"
int zb_plan_read(const char *path, zb_config *c);

/* Runtime (cmd_runtime.c), called by main for every command: OpenMP threads (the bf16 kernels,
 * and OpenBLAS when it is its OpenMP build) = OMP_NUM_THREADS, else OPENBLAS_NUM_THREADS with
 * OpenBLAS on OpenMP, else the node's cores / its MPI ranks (returns the count); the process's peak
 * resident memory (VmHWM of /proc/self/status) in kB, -1 if unknown. */
#include <mpi.h>

#include "model.h"
int zb_threads_auto(MPI_Comm comm);
/* Rank 0 warns (one line) when OpenBLAS runs its generic core on a CPU with AVX2/AVX-512. */
void zb_blas_check_core(int rank);
long zb_vm_hwm_kb(void);
/* The backend an inference command runs its models on: the CPU table with this run's decode
 * switch (backend.h zb_backend_opts.decode_omp): the OpenMP decode kernels with bf16 weights, or
 * always when OpenBLAS itself runs on OpenMP (one thread pool per run, core/cpu/ops.c). */
zb_backend zb_infer_backend(zb_wdtype wt);
/* The device flags of every command (one parser): --device cpu|cuda (default cpu; one rank
 * per GPU, the local rank picks it), --precision f32|bf16 (the GPU's matrix products: bf16
 * operands with float32 weights and sums, the default there; float32 for exactness) and
 * --cache f32|bf16 (the GPU's generation caches; cache_bf16_default says which there). The CPU
 * takes f32 only. Errors name the command: "<cmd>: --device must be cpu or cuda, not 'x'". */
typedef struct { int gpu, bf16, cache_bf16; } zb_device_args;
int zb_device_args_parse(int argc, char **argv, const char *cmd, int cache_bf16_default, zb_device_args *d);
/* The backend of those flags: the CPU table with the decode switches of weights wt
 * (zb_infer_backend), or this rank's GPU with the precision and cache switches set. */
int zb_device_backend(const zb_device_args *d, zb_wdtype wt, const char *cmd, zb_backend *out);
/* Both at once, bf16 caches by default on the GPU (bench, eval). */
int zb_backend_from_args(int argc, char **argv, const char *cmd, zb_wdtype wt, zb_backend *out);
/* The GPU's ceilings, measured where a bench runs: bf16 GEMM TFLOP/s (cuBLAS 8192^3, float32
 * out, best of 6 after 2 warm-ups) and, when gbs is not NULL, the device copy's GB/s (read +
 * write of 2 GiB). 0 where not built with CUDA (cmd_bench.c). */
void zb_bench_gpu_ceilings(const zb_backend *be, double *tflops, double *gbs);
/* The GPU's memory in use (total - free, every process's) and its total, bytes; -1 without a GPU. */
int zb_bench_device_memory(size_t *used, size_t *total);
#define ZB_DEVICE_ARGS "--device", "--precision", "--cache"

/* Small helpers for argument parsing shared by the commands. */
/* Returns the value after flag `name` (e.g. "--model"), or NULL. Marks nothing. */
const char *zb_arg_str(int argc, char **argv, const char *name, const char *dflt);
/* Numbers, strictly: the whole value parsed (no trailing text, no empty value), inside
 * [lo, hi] (nan and inf refused unless a bound is infinite), no value wrapping around; else
 * ZB_EARG "<cmd>: --max-new must be an integer in [1, 1000000], not 'abc'". Flag absent:
 * *out = dflt. */
int zb_arg_int(int argc, char **argv, const char *name, int dflt, long lo, long hi, int *out);
int zb_arg_long(int argc, char **argv, const char *name, long dflt, long lo, long hi, long *out);
int zb_arg_u64(int argc, char **argv, const char *name, uint64_t dflt, uint64_t *out);
int zb_arg_double(int argc, char **argv, const char *name, double dflt, double lo, double hi, double *out);
/* A JSON value that must be an integer in [lo, hi] (cJSON truncates 1.5 to 1 and saturates
 * 1e12 in valueint): 1 and *out when it is, 0 otherwise (the caller names the file). */
struct cJSON;
int zb_json_value_int(const struct cJSON *v, long lo, long hi, long *out);
/* The same for a value in hand; `what` names it ("data: --seed", "prompts.txt:3"). */
int zb_parse_long(const char *s, const char *what, long lo, long hi, long *out);
int zb_parse_u64(const char *s, const char *what, uint64_t *out);
int zb_parse_double(const char *s, const char *what, double lo, double hi, double *out);
int zb_arg_flag(int argc, char **argv, const char *name);
/* Every argument must be a known flag (known: NULL-terminated list of "--name" or
 * "--name=" for flags that take a value) or a positional; else ZB_EARG naming it. */
int zb_args_check(int argc, char **argv, const char *const *known_value_flags,
                  const char *const *known_bool_flags, int max_positional);
/* The i-th positional argument (not a flag nor a flag's value), or NULL. */
const char *zb_arg_pos(int argc, char **argv, const char *const *known_value_flags, int i);

#endif
