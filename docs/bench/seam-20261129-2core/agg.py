import glob, re, statistics, sys
d = sys.argv[1] if len(sys.argv) > 1 else '/tmp/arch_bench'
rows = {}
for w in ('before', 'after'):
    for f in sorted(glob.glob(f'{d}/{w}-*.md')):
        for line in open(f):
            c = [x.strip() for x in line.split('|')[1:-1]]
            if len(c) == 10 and c[0] in ('teacher', 'hybrid'):
                k = (c[0], int(c[3]), int(c[4]))
                rows.setdefault(k, {'before': [[], []], 'after': [[], []]})[w][0].append(float(c[5]))
                rows[k][w][1].append(float(c[7]))
print('| model | batch | context | prefill tok/s before | after | after/before | decode tok/s before | after | after/before |')
print('|---|---|---|---|---|---|---|---|---|')
for k in sorted(rows):
    b, a = rows[k]['before'], rows[k]['after']
    pb, pa, db, da = max(b[0]), max(a[0]), max(b[1]), max(a[1])
    print(f'| {k[0]} | {k[1]} | {k[2]} | {pb:.0f} | {pa:.0f} | {pa/pb:.2f} | {db:.0f} | {da:.0f} | {da/db:.2f} |')
n = {w: len(glob.glob(f'{d}/{w}-*.md')) for w in ('before', 'after')}
print(n)
