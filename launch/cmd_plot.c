/* zebra plot LOG.jsonl [LOG2.jsonl ...] -o loss.svg
 * Two panels written directly as SVG: training loss (and validation loss, dots) against the
 * step, and training throughput (tokens/s) against the step, from the JSONL logs that
 * `zebra train` writes (one JSON object per line). Several logs (e.g. ild, kd) are drawn
 * in different colours. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "zb_common.h"

#define ZB_PLOT_MAX_LOGS 8

typedef struct { double *x, *y; int n, cap; } series;

static int push(series *s, double x, double y) {
    if (s->n == s->cap) {
        int c = s->cap ? 2 * s->cap : 256;
        double *nx = realloc(s->x, sizeof(double) * c), *ny;
        if (!nx) return zb_fail(ZB_ENOMEM, "plot: out of memory");
        s->x = nx;
        ny = realloc(s->y, sizeof(double) * c);
        if (!ny) return zb_fail(ZB_ENOMEM, "plot: out of memory");
        s->y = ny;
        s->cap = c;
    }
    s->x[s->n] = x; s->y[s->n] = y; s->n++;
    return ZB_OK;
}

typedef struct { double x0, x1, y0, y1; } range;

static void grow(range *r, const series *s) {
    for (int i = 0; i < s->n; i++) {
        if (s->x[i] < r->x0) r->x0 = s->x[i];
        if (s->x[i] > r->x1) r->x1 = s->x[i];
        if (s->y[i] < r->y0) r->y0 = s->y[i];
        if (s->y[i] > r->y1) r->y1 = s->y[i];
    }
}

static const char *const colors[ZB_PLOT_MAX_LOGS] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                                     "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};

/* Panel at (px, py) of size w x h. */
static void panel(FILE *f, double px, double py, double w, double h, const char *title,
                  const char *ylabel, series *lines, series *dots, int n, char names[][256]) {
    range r = {INFINITY, -INFINITY, INFINITY, -INFINITY};
    for (int i = 0; i < n; i++) { grow(&r, &lines[i]); if (dots) grow(&r, &dots[i]); }
    if (!(r.x1 > r.x0)) { r.x0 = isfinite(r.x0) ? r.x0 - 1 : 0; r.x1 = r.x0 + 2; }
    if (!(r.y1 > r.y0)) { r.y0 = isfinite(r.y0) ? r.y0 - 1 : 0; r.y1 = r.y0 + 2; }
    double pad = 0.05 * (r.y1 - r.y0);
    r.y0 -= pad; r.y1 += pad;
    double L = px + 70, R = px + w - 20, T = py + 30, B = py + h - 40;
#define SX(x) (L + ((x) - r.x0) / (r.x1 - r.x0) * (R - L))
#define SY(y) (B - ((y) - r.y0) / (r.y1 - r.y0) * (B - T))
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='15' text-anchor='middle'>%s</text>\n", (L + R) / 2, py + 20, title);
    fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#444'/>\n", L, T, R - L, B - T);
    for (int k = 0; k <= 4; k++) {
        double yv = r.y0 + (r.y1 - r.y0) * k / 4, xv = r.x0 + (r.x1 - r.x0) * k / 4;
        fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#ddd'/>\n", L, SY(yv), R, SY(yv));
        fprintf(f, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='end'>%.4g</text>\n", L - 4, SY(yv) + 4, yv);
        fprintf(f, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='middle'>%.0f</text>\n", SX(xv), B + 15, xv);
    }
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='12' text-anchor='middle'>step</text>\n", (L + R) / 2, B + 32);
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='12' text-anchor='middle' transform='rotate(-90 %.1f %.1f)'>%s</text>\n",
            px + 16, (T + B) / 2, px + 16, (T + B) / 2, ylabel);
    for (int i = 0; i < n; i++) {
        if (lines[i].n > 0) {
            fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='1.5' points='", colors[i]);
            for (int j = 0; j < lines[i].n; j++) fprintf(f, "%.1f,%.1f ", SX(lines[i].x[j]), SY(lines[i].y[j]));
            fprintf(f, "'/>\n");
        }
        if (dots)
            for (int j = 0; j < dots[i].n; j++)
                fprintf(f, "<circle cx='%.1f' cy='%.1f' r='3.5' fill='white' stroke='%s' stroke-width='1.5'/>\n",
                        SX(dots[i].x[j]), SY(dots[i].y[j]), colors[i]);
        fprintf(f, "<text x='%.1f' y='%.1f' font-size='11' fill='%s' text-anchor='end'>%s%s</text>\n", R - 6,
                T + 14 + 14 * i, colors[i], names[i], dots ? " (o = validation)" : "");
    }
#undef SX
#undef SY
}

static void xml_escape(char *dst, size_t cap, const char *s) {
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        const char *e = *s == '<' ? "&lt;" : *s == '>' ? "&gt;" : *s == '&' ? "&amp;" : *s == '\'' ? "&apos;" : NULL;
        if (e) { memcpy(dst + o, e, strlen(e)); o += strlen(e); }
        else dst[o++] = *s;
    }
    dst[o] = 0;
}

int zb_cmd_plot(int argc, char **argv) {
    static const char *const vals[] = {"-o", NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, NULL, ZB_PLOT_MAX_LOGS));
    const char *out = zb_arg_str(argc, argv, "-o", NULL);
    if (!out || !zb_arg_pos(argc, argv, vals, 0))
        return zb_fail(ZB_EARG, "plot: needs LOG.jsonl [LOG2.jsonl ...] -o loss.svg");
    series loss[ZB_PLOT_MAX_LOGS], val[ZB_PLOT_MAX_LOGS], tps[ZB_PLOT_MAX_LOGS];
    char names[ZB_PLOT_MAX_LOGS][256];
    memset(loss, 0, sizeof loss); memset(val, 0, sizeof val); memset(tps, 0, sizeof tps);
    int n = 0, rc = ZB_OK;
    for (const char *path; rc == ZB_OK && n < ZB_PLOT_MAX_LOGS && (path = zb_arg_pos(argc, argv, vals, n)); n++) {
        char *text = NULL;
        size_t len = 0;
        rc = zb_read_file(path, &text, &len);
        if (rc) break;
        xml_escape(names[n], sizeof names[n], path);
        int lineno = 0;
        for (char *line = strtok(text, "\n"); line && !rc; line = strtok(NULL, "\n")) {
            lineno++;
            cJSON *j = cJSON_Parse(line);
            if (!j) { rc = zb_fail(ZB_EFORMAT, "%s:%d: not a JSON object", path, lineno); break; }
            const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "step");
            const cJSON *l = cJSON_GetObjectItemCaseSensitive(j, "loss");
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "val_loss");
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "tokens_per_s");
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "stage");
            if (lineno == 1 && cJSON_IsString(st)) {
                char e[200];
                xml_escape(e, sizeof e, st->valuestring);
                size_t k = strlen(names[n]);
                snprintf(names[n] + k, sizeof names[n] - k, " [%.40s]", e);
            }
            if (cJSON_IsNumber(s)) {
                if (cJSON_IsNumber(l)) rc = push(&loss[n], s->valuedouble, l->valuedouble);
                if (!rc && cJSON_IsNumber(v)) rc = push(&val[n], s->valuedouble, v->valuedouble);
                if (!rc && cJSON_IsNumber(t) && t->valuedouble > 0) rc = push(&tps[n], s->valuedouble, t->valuedouble);
            }
            cJSON_Delete(j);
        }
        free(text);
    }
    if (!rc) {
        FILE *f = fopen(out, "w");
        if (!f) rc = zb_fail(ZB_EIO, "%s: cannot write", out);
        else {
            fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='900' height='700' font-family='sans-serif'>\n"
                       "<rect width='100%%' height='100%%' fill='white'/>\n");
            panel(f, 0, 0, 900, 380, "training loss", "loss", loss, val, n, names);
            panel(f, 0, 380, 900, 320, "throughput", "tokens/s", tps, NULL, n, names);
            fprintf(f, "</svg>\n");
            if (fclose(f)) rc = zb_fail(ZB_EIO, "%s: write failed", out);
        }
    }
    for (int i = 0; i < ZB_PLOT_MAX_LOGS; i++) {
        free(loss[i].x); free(loss[i].y); free(val[i].x); free(val[i].y); free(tps[i].x); free(tps[i].y);
    }
    return rc;
}
