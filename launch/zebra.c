/* zebra — the one driver. `zebra <command> [options]`, under mpirun or alone.
 *
 * A command returns a status; on failure the failing rank prints its one-line message and,
 * when more than one rank runs, calls MPI_Abort so that no other rank waits forever. */
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "zb_common.h"



typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} zb_command;

static const zb_command commands[] = {
    {"data", zb_cmd_data, "data --tokenizer F --input PATH... -o SHARDS [--val-fraction 0.01] [--format text|jsonl|chat|pref]"},
    {"import", zb_cmd_import, "import DIR -o model.h5: HF or Zebra-Llama release checkpoint -> native HDF5"},
    {"export", zb_cmd_export, "export MODEL -o DIR [--dtype bf16|f32]: Zebra-Llama release layout (hybrid) or HF Llama dir"},
    {"tokenize", zb_cmd_tokenize, "tokenize --tokenizer tokenizer.json [--text T | stdin]: print ids"},
    {"dump", zb_cmd_dump, "dump --model M --input F.safetensors --out O.safetensors [--grads]"},
    {"generate", zb_cmd_generate, "generate --model M (--prompt-ids 1,2,3 | --prompt TEXT --tokenizer F) --max-new N"},
    {"info", zb_cmd_info, "info [--json] MODEL_OR_CONFIG: parameters, cache bytes"},
    {"plan", zb_cmd_plan, "plan MODEL_OR_RUN.json --ranks N [--tp T] [--pp P] [--per-node K]: the grid, without running"},
    {"eval", zb_cmd_eval, "eval --model M (--data SHARDS | --tasks F.jsonl [--tokenizer F]) [--json out]"},
    {"bench", zb_cmd_bench, "bench --teacher T --hybrid H [--contexts 1024,4096] [--batches 1,4] [--svg F]"},
    {"init", zb_cmd_init, "init --random --config C.json -o model.h5 [--seed S] [--dtype bf16|f32]"},
    {"compose", zb_cmd_compose, "compose --teacher T --config C.json [--plan P.json] -o student.h5 [--dtype f32|bf16]"},
    {"smart", zb_cmd_smart, "smart --teacher T --mamba M --mla A --data D --mla-layers K -o plan.json [--svg plan.svg]"},
    {"train", zb_cmd_train, "train --stage pretrain|ild|kd|sft|dpo --config run.json [--resume CKPT.h5] [--tp N] [--pp M] [--stop-after STEP]"},
    {"plot", zb_cmd_plot, "plot LOG.jsonl -o loss.svg: loss and tokens/s curves of a training log"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: zebra <command> [options]\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (commands[i].fn) fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    /* A file size limit (ulimit -f) kills a writer with SIGXFSZ: no message, a half-written
     * temporary left behind. Ignored, the write fails with EFBIG like a full disk, and the
     * error path says so, removes the temporary and stops every rank. */
    signal(SIGXFSZ, SIG_IGN);
    /* A progress thread for the data-parallel buckets (parallel/dp.h) calls MPI beside the
     * main thread: asked for only then, the other runs keep MPI's single-thread paths. */
    const char *prog = getenv("ZB_DP_PROGRESS");
    if (prog && !strncmp(prog, "thread", 6)) {
        int provided;
        MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    } else MPI_Init(&argc, &argv);
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        if (rank == 0) usage(argc < 2 ? stderr : stdout);
        MPI_Finalize();
        return argc < 2 ? 2 : 0;
    }
    const zb_command *cmd = NULL;
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (commands[i].fn && !strcmp(argv[1], commands[i].name)) cmd = &commands[i];
    if (!cmd) {
        if (rank == 0) { fprintf(stderr, "zebra: unknown command '%s'\n", argv[1]); usage(stderr); }
        MPI_Finalize();
        return 2;
    }
    zb_threads_auto(MPI_COMM_WORLD);   /* every rank: its share of the node's cores (cmd_runtime.c) */
    zb_blas_check_core(rank);
    int rc = cmd->fn(argc - 1, argv + 1);
    if (rc != ZB_OK) {
        fprintf(stderr, "zebra %s: error: %s\n", cmd->name, zb_errmsg());
        fflush(stderr);
        if (size > 1) MPI_Abort(MPI_COMM_WORLD, rc);   /* stop every rank, never hang */
        MPI_Finalize();
        return rc;
    }
    MPI_Finalize();
    return 0;
}
