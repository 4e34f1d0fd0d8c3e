/* optim.c — see optim.h. */
#include "optim.h"

#include <fnmatch.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

zb_optim_cfg zb_optim_defaults(void) {
    zb_optim_cfg c = {3e-4f, 3e-5f, 0, 1000, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};
    return c;
}

int zb_adamw_init(zb_adamw *o, const zb_model *m, const zb_optim_cfg *cfg) {
    memset(o, 0, sizeof *o);
    o->cfg = *cfg;
    o->n_params = m->n_params;
    o->n_floats = m->n_floats;
    o->be = m->be;
    ZB_BE_ALLOC(o->be, o->m, m->n_floats, "optimizer first moments");
    ZB_BE_ALLOC(o->be, o->v, m->n_floats, "optimizer second moments");
    ZB_ALLOC(o->lr_mult, m->n_params, "optimizer groups");
    ZB_ALLOC(o->wd, m->n_params, "optimizer groups");
    ZB_ALLOC(o->trainable, m->n_params, "optimizer groups");
    for (int i = 0; i < m->n_params; i++) {
        o->lr_mult[i] = 1.0f;
        o->wd[i] = m->params[i].no_decay ? 0.0f : cfg->weight_decay;
        o->trainable[i] = 1;
    }
    return ZB_OK;
}

void zb_adamw_free(zb_adamw *o) {
    if (o->be) {
        o->be->free(o->be, o->m);
        o->be->free(o->be, o->v);
    }
    free(o->lr_mult); free(o->wd); free(o->trainable);
    memset(o, 0, sizeof *o);
}

int zb_param_match(const char *pattern, const char *name) {
    if (strpbrk(pattern, "*?[")) return fnmatch(pattern, name, 0) == 0;
    return strstr(name, pattern) != NULL;
}

int zb_adamw_set_group(zb_adamw *o, const zb_model *m, const char *pattern, float lr_mult,
                       float wd, int trainable) {
    int n = 0;
    for (int i = 0; i < m->n_params; i++) {
        if (!zb_param_match(pattern, m->params[i].name)) continue;
        if (lr_mult >= 0) o->lr_mult[i] = lr_mult;
        if (wd >= 0) o->wd[i] = wd;
        if (trainable >= 0) o->trainable[i] = (unsigned char)(trainable != 0);
        n++;
    }
    return n;
}

void zb_adamw_set_all_trainable(zb_adamw *o, int v) {
    for (int i = 0; i < o->n_params; i++) o->trainable[i] = (unsigned char)(v != 0);
}

size_t zb_adamw_trainable_floats(const zb_adamw *o, const zb_model *m) {
    size_t n = 0;
    for (int i = 0; i < m->n_params; i++) if (o->trainable[i]) n += m->params[i].numel;
    return n;
}

float zb_lr_at(const zb_optim_cfg *c, int64_t step) {
    if (c->warmup > 0 && step < c->warmup) return c->lr * (float)(step + 1) / (float)c->warmup;
    int64_t span = (int64_t)c->total_steps - c->warmup;
    if (span <= 0) return c->lr;
    double p = (double)(step - c->warmup) / (double)span;
    if (p > 1) p = 1;
    return (float)(c->min_lr + 0.5 * (c->lr - c->min_lr) * (1.0 + cos(M_PI * p)));
}

int zb_optim_per_tensor(void) {
    const char *e = getenv("ZB_OPTIM");
    return e && !strcmp(e, "per_tensor");
}

double zb_grad_norm(const zb_adamw *o, const zb_model *m) {
    double s = 0;
    zb_range *r = zb_optim_per_tensor() ? NULL : malloc(sizeof(zb_range) * (size_t)(m->n_params + 1));
    int n = 0;
    for (int i = 0; i < m->n_params; i++) {
        if (!o->trainable[i]) continue;
        if (!r) { s += m->be->sumsq(m->be, m->grad + m->params[i].offset, m->params[i].numel); continue; }
        r[n].off = m->params[i].offset;
        r[n].n = m->params[i].numel;
        r[n].decay = r[n].step_size = 0;
        n++;
    }
    if (r) s = m->be->sumsq_ranges(m->be, m->grad, n, r);
    free(r);
    return sqrt(s);
}

float zb_clip_scale(const zb_optim_cfg *c, double norm) {
    if (c->clip <= 0 || !(norm > c->clip)) return 1.0f;
    return (float)(c->clip / (norm + 1e-6));
}

void zb_adamw_update_range(const zb_adamw *o, zb_model *m, size_t lo, size_t hi, const float *g,
                           float *mm, float *vv, float lr, float grad_scale) {
    const float b1 = o->cfg.beta1, b2 = o->cfg.beta2;
    double t = (double)(o->step + 1);
    float bc1 = (float)(1.0 - pow(b1, t)), bc2_sqrt = (float)sqrt(1.0 - pow(b2, t));
    /* one call for every range (ZB_OPTIM=per_tensor: a call per tensor, as before) */
    zb_range *r = zb_optim_per_tensor() ? NULL : malloc(sizeof(zb_range) * (size_t)(m->n_params + 1));
    int n = 0;
    for (int i = 0; i < m->n_params; i++) {
        if (!o->trainable[i]) continue;
        const zb_param *p = &m->params[i];
        size_t a = p->offset > lo ? p->offset : lo, b = p->offset + p->numel < hi ? p->offset + p->numel : hi;
        if (a >= b) continue;
        float lri = lr * o->lr_mult[i];
        zb_adamw_hp hp = {b1, b2, o->cfg.eps, 1.0f - lri * o->wd[i], lri / bc1, bc2_sqrt, grad_scale};
        if (!r) {
            m->be->adamw(m->be, m->data + a, g + (a - lo), mm + (a - lo), vv + (a - lo), b - a, &hp);
            continue;
        }
        r[n].off = a - lo;
        r[n].n = b - a;
        r[n].decay = hp.decay;
        r[n].step_size = hp.step_size;
        n++;
    }
    if (r && n) {
        zb_adamw_hp hp = {b1, b2, o->cfg.eps, 1.0f, 0.0f, bc2_sqrt, grad_scale};
        m->be->adamw_ranges(m->be, m->data + lo, g, mm, vv, n, r, &hp);
    }
    free(r);
}

void zb_adamw_step(zb_adamw *o, zb_model *m, float lr, float grad_scale) {
    zb_adamw_update_range(o, m, 0, m->n_floats, m->grad, o->m, o->v, lr, grad_scale);
    o->step++;
}
