/* zebra dump — run a model on given token ids and write what an outside implementation can
 * be compared with: logits, hidden states (HF convention), the LM loss and, with --grads,
 * the gradient of that loss with respect to every parameter (HF names). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "commands.h"
#include "grid.h"
#include "model.h"
#include "safetensors.h"
#include "tp.h"

static int read_ids(const char *path, int **ids, int *B, int *T) {
    zb_safetensors *st = NULL;
    ZB_TRY(zb_st_open(&st, path));
    const zb_st_tensor *t = zb_st_get(st, "input_ids");
    int rc = ZB_OK;
    if (!t) rc = zb_fail(ZB_ENOTFOUND, "%s: no tensor 'input_ids'", path);
    else if (t->ndim != 2 && t->ndim != 1)
        rc = zb_fail(ZB_ESHAPE, "%s: input_ids must be [B,T] (has %d dims)", path, t->ndim);
    if (!rc) {
        *B = t->ndim == 2 ? (int)t->shape[0] : 1;
        *T = (int)t->shape[t->ndim - 1];
        *ids = zb_malloc(sizeof(int) * (size_t)t->numel, "input ids");
        if (!*ids) rc = ZB_ENOMEM;
        else rc = zb_st_to_i32(t, (int32_t *)*ids);
    }
    zb_st_close(st);
    return rc;
}

static int check_ids(const int *ids, size_t n, int V, const char *path) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return zb_fail(ZB_EARG, "%s: token id %d at index %zu is outside the vocabulary [0, %d)",
                           path, ids[i], i, V);
    return ZB_OK;
}

/* grid != NULL: the model is split over the TP group (parallel/tp.h); logits and gradients
 * are gathered to full tensors and world rank 0 writes the file. */
static int dump(const char *model_path, const char *in, const char *out, int grads, const zb_grid *grid) {
    int *ids = NULL, B = 0, T = 0, rc;
    zb_model m;
    zb_acts a;
    memset(&a, 0, sizeof a);
    ZB_TRY(read_ids(in, &ids, &B, &T));
    rc = grid ? zb_model_load_tp(&m, model_path, grid) : zb_model_load(&m, model_path);
    if (rc) { free(ids); return rc; }
    const zb_config *c = zb_model_full_config(&m);
    int writer = !grid || grid->rank == 0;
    float *full = NULL;   /* TP: gathered logits, then gathered gradients */
    size_t full_n = (size_t)B * T * c->vocab;
    for (int i = 0; i < m.n_params; i++)
        if (m.tp && m.tp->full_params[i].numel > full_n) full_n = m.tp->full_params[i].numel;
    if (m.tp && !(full = zb_malloc(sizeof(float) * full_n, "gathered tensors"))) rc = ZB_ENOMEM;
    rc = check_ids(ids, (size_t)B * T, c->vocab, in);
    if (!rc) rc = zb_acts_alloc(&a, &m, B, T);
    if (!rc && grads) rc = zb_model_alloc_grad(&m);
    zb_st_writer *w = rc ? NULL : zb_st_writer_new();   /* (unused off rank 0 under TP) */
    if (!rc && !w) rc = zb_fail(ZB_ENOMEM, "out of memory (writer)");
    if (!rc) {
        zb_model_forward(&m, &a, ids);
        size_t Nd = (size_t)B * T * c->d_model;
        int64_t shl[3] = {B, T, c->vocab}, shh[3] = {B, T, c->d_model}, one = 1;
        if (m.tp) rc = zb_tp_gather_vocab(m.tp, a.logits, NULL, full, B * T, m.cfg.vocab);
        if (!rc) rc = zb_st_writer_add(w, "logits", ZB_DT_F32, 3, shl, m.tp ? full : a.logits);
        char name[ZB_PARAM_NAME + 8];
        for (int i = 0; i <= c->n_layers && !rc; i++) {
            snprintf(name, sizeof name, "hidden_states.%d", i);
            rc = zb_st_writer_add(w, name, ZB_DT_F32, 3, shh, i < c->n_layers ? a.res + i * Nd : a.lnf);
        }
        float loss = (float)zb_model_lm_loss(&m, &a, ids, grads);
        if (!rc) rc = zb_st_writer_add(w, "loss", ZB_DT_F32, 1, &one, &loss);
        int64_t shi[2] = {B, T};
        if (!rc) rc = zb_st_writer_add(w, "input_ids", ZB_DT_I32, 2, shi, ids);
        if (!rc && grads) {
            zb_model_zero_grad(&m);
            zb_model_backward(&m, &a, ids);
            for (int i = 0; i < m.n_params && !rc; i++) {
                const zb_param *p = m.tp ? &m.tp->full_params[i] : &m.params[i];
                snprintf(name, sizeof name, "grad.%s", p->name);
                if (m.tp) rc = zb_tp_gather_param(&m, i, m.grad + m.params[i].offset, full);
                if (!rc) rc = zb_st_writer_add(w, name, ZB_DT_F32, p->ndim, p->shape,
                                               m.tp ? full : m.grad + p->offset);
            }
        }
        if (writer) fprintf(stderr, "dump: B=%d T=%d loss=%.6f\n", B, T, loss);
        if (!rc && writer) rc = zb_st_writer_save(w, out);
    }
    zb_st_writer_free(w);
    free(full);
    zb_acts_free(&a);
    zb_model_free(&m);
    free(ids);
    return rc;
}

int zb_cmd_dump(int argc, char **argv) {
    static const char *const vals[] = {"--model", "--input", "--out", "--tp", NULL};
    static const char *const flags[] = {"--grads", NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, flags, 0));
    const char *model = zb_arg_str(argc, argv, "--model", NULL);
    const char *in = zb_arg_str(argc, argv, "--input", NULL);
    const char *out = zb_arg_str(argc, argv, "--out", NULL);
    if (!model || !in || !out)
        return zb_fail(ZB_EARG, "dump: needs --model M --input F.safetensors --out O.safetensors");
    int tp;
    ZB_TRY(zb_arg_int(argc, argv, "--tp", 1, 1, 1 << 12, &tp));
    if (tp <= 1) return dump(model, in, out, zb_arg_flag(argc, argv, "--grads"), NULL);
    zb_grid grid;
    ZB_TRY(zb_grid_init(&grid, MPI_COMM_WORLD, tp, 1));
    int rc = dump(model, in, out, zb_arg_flag(argc, argv, "--grads"), &grid);
    zb_grid_free(&grid);
    return rc;
}
