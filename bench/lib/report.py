#!/usr/bin/env python3
"""Turns bench/run.sh's raw results into docs/benchmarks.md and SVG bar charts.

usage: report.py RESULTS_DIR OUT_MD CHART_DIR

RESULTS_DIR holds meta.json and results.jsonl (one JSON object per measurement). Python 3
standard library only; the charts are hand-written SVG. The section between
<!-- history --> and <!-- /history --> of an existing OUT_MD is kept as it is.
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import charts  # noqa: E402 (beside this file)
import hist  # noqa: E402

TARGETS = charts.TARGETS
PROXIES = TARGETS[1:]
DROP = 0.15  # a round whose reference figure is this far from the median is dropped
SIZE_LABEL = {"12": "12 B", "4k": "4 KiB", "64k": "64 KiB"}

results_dir, out_md, chart_dir = sys.argv[1:4]
meta = json.load(open(os.path.join(results_dir, "meta.json")))
rows = [json.loads(l) for l in open(os.path.join(results_dir, "results.jsonl")) if l.strip()]
os.makedirs(chart_dir, exist_ok=True)
chart_rel = os.path.relpath(chart_dir, os.path.dirname(os.path.abspath(out_md)) or ".")


def med(v):
    return statistics.median(v) if v else None


def sel(**kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def by_round(rs, value):
    """{round: {target: value}}"""
    out = {}
    for r in rs:
        v = value(r)
        if v is not None:
            out.setdefault(r["round"], {})[r["target"]] = v
    return out


def kept_rounds(rounds, ref, limit=DROP):
    """Drops rounds whose reference target strays more than `limit` from its median."""
    refs = [t[ref] for t in rounds.values() if ref in t]
    if len(refs) < 3:
        return rounds, []
    m = med(refs)
    keep, dropped = {}, []
    for k, t in rounds.items():
        if ref in t and m and abs(t[ref] - m) / m > limit:
            dropped.append(k)
        else:
            keep[k] = t
    return keep, dropped


def stats(rounds, target, base=None, diff=False):
    """Median, min, max over rounds of the target's value, or of its ratio to (difference from)
    base within each round."""
    vals = []
    for t in rounds.values():
        if target not in t:
            continue
        if base is None:
            vals.append(t[target])
        elif base in t and (diff or t[base]):
            vals.append(t[target] - t[base] if diff else t[target] / t[base])
    if not vals:
        return None
    return med(vals), min(vals), max(vals)


def fmt(x, nd=0):
    if x is None:
        return "–"
    if isinstance(x, tuple):
        return fmt(x[0], nd)
    return f"{x:,.{nd}f}"


def ratio(s):
    if s is None:
        return "–"
    return f"{s[0]:.2f} ({s[1]:.2f}–{s[2]:.2f})"


def spread(s, nd=0):
    if s is None:
        return "–"
    return f"{s[0]:,.{nd}f} ({s[1]:,.{nd}f}–{s[2]:,.{nd}f})"


# ---------------- SVG ----------------
def bar_chart(name, title, unit, groups, ref_line=None):
    """Writes CHART_DIR/name.svg (charts.bar_chart) and returns its Markdown image."""
    charts.bar_chart(os.path.join(chart_dir, name + ".svg"), title, unit, groups, ref_line)
    return f"![{title}]({chart_rel}/{name}.svg)"


# ---------------- figures ----------------
md = []
targets_rows = []  # (goal, measured, ok)
notes_dropped = []


def target_row(goal, measured, ok):
    if ok is not None and not isinstance(ok, bool):
        ok = bool(ok)
    if measured.startswith("–"):
        ok = None
    targets_rows.append((goal, measured, "✅ met" if ok else ("❌ not met" if ok is not None else "–")))


def h1_rounds(mode, size, value):
    rs = by_round(sel(fig="h1", mode=mode, size=size), value)
    rs, dropped = kept_rounds(rs, "direct")
    if dropped:
        notes_dropped.append(f"HTTP/1.1 {mode} {SIZE_LABEL[size]}: round(s) {', '.join(map(str, dropped))} dropped (direct figure off the median by more than {DROP:.0%})")
    return rs, dropped


# Figure 1
md.append("## 1. HTTP/1.1 keep-alive throughput\n")
md.append("`wrk -t1 -c64 -d{s}s` with `Host: bench.test`, bodies of 12 B, 4 KiB and 64 KiB. Requests/s "
          "(median of rounds), and the median of the within-round ratios to nginx and to direct "
          "(min–max in brackets).\n".format(s=meta["seconds"]))
md.append("| target | body | req/s | × nginx | × direct |\n|---|---|---:|---:|---:|")
h1 = {}
chart_groups = []
chart_abs = []
for size in ["12", "4k", "64k"]:
    rs, _ = h1_rounds("pinned", size, lambda r: r["rps"] or None)
    h1[size] = rs
    bars, bars_abs = [], []
    for t in TARGETS:
        a = stats(rs, t)
        if a is None:
            continue
        md.append(f"| {t} | {SIZE_LABEL[size]} | {fmt(a[0])} | {ratio(stats(rs, t, 'nginx'))} | {ratio(stats(rs, t, 'direct'))} |")
        if t != "direct":
            bars.append((t, stats(rs, t, "nginx")))
        bars_abs.append((t, a))
    chart_groups.append((SIZE_LABEL[size], bars))
    chart_abs.append((SIZE_LABEL[size], bars_abs))
md.append("")
bound = [f"{t} at {SIZE_LABEL[z]}" for z in h1 for t in PROXIES
         if (lambda x: x is not None and x[0] >= 0.95)(stats(h1[z], t, "direct"))]
if bound:
    md.append("Where a proxy reaches 0.95 × direct or more (" + ", ".join(bound) + "), the load "
              "generator or the origin, not the proxy, is the limit: its ratio to nginx says little "
              "there, its CPU per request (figure 2) more.\n")
md.append(bar_chart("h1-ratio", "HTTP/1.1 keep-alive throughput, ratio to nginx", "× nginx", chart_groups, (1.0, "nginx")))
md.append(bar_chart("h1-rps", "HTTP/1.1 keep-alive throughput", "requests/s", chart_abs))
md.append("")
s12 = stats(h1["12"], "proxyd", "nginx")
target_row("HTTP/1.1 throughput ≥ 1.15 × nginx at 12 B", ratio(s12), s12 and s12[0] >= 1.15)
sh = stats(h1["12"], "proxyd", "haproxy")
target_row("HTTP/1.1 throughput ≥ HAProxy at 12 B", f"{ratio(sh)} × HAProxy", sh and sh[0] >= 1.0)
for size in ["4k", "64k"]:
    s = stats(h1[size], "proxyd", "nginx")
    target_row(f"HTTP/1.1 throughput not below nginx at {SIZE_LABEL[size]}", ratio(s), s and s[0] >= 1.0)

# Figure 2
md.append("## 2. Proxy CPU time per request\n")
md.append("utime + stime of the proxy's processes (`/proc/PID/stat`; nginx: master and worker; "
          "proxyd: the data plane, without controld) across each figure-1 run, divided by the "
          "requests wrk completed. µs per request, median (min–max); ratio to nginx within the round.\n")
md.append("| target | body | µs / request | × nginx |\n|---|---|---:|---:|")
cpu = {}
chart_groups = []
for size in ["12", "4k", "64k"]:
    rs, _ = h1_rounds("pinned", size, lambda r: r["cpu_ticks"] / r["hz"] / r["requests"] * 1e6 if r["requests"] else None)
    cpu[size] = rs
    bars = []
    for t in PROXIES:
        a = stats(rs, t)
        if a is None:
            continue
        md.append(f"| {t} | {SIZE_LABEL[size]} | {spread(a, 2)} | {ratio(stats(rs, t, 'nginx'))} |")
        bars.append((t, a))
    chart_groups.append((SIZE_LABEL[size], bars))
md.append("")
md.append(bar_chart("cpu-per-request", "Proxy CPU time per request (HTTP/1.1 keep-alive)", "µs / request", chart_groups))
md.append("")
c = stats(cpu["12"], "proxyd")
cn = stats(cpu["12"], "proxyd", "nginx")
target_row("CPU per request ≤ nginx's (12 B)", f"{fmt(c, 2)} µs, {ratio(cn)} × nginx", cn and cn[0] <= 1.0)

# Figure 3
lat = sel(fig="latency", mode="pinned")
rate = lat[0]["rate"] if lat else None
md.append("## 3. Added latency at a fixed rate (open loop)\n")
segments = max(1, len(lat) // max(1, len({(r["round"], r["target"]) for r in lat})))
md.append(f"`openloop --rate {rate} --connections 16` (12 B, HTTP/1.1 keep-alive; latency from "
          "each request's scheduled start, so queueing counts), "
          f"{meta['latency_seconds']} s per target and round in {segments} segment(s), the targets' "
          "segments interleaved; a round's percentiles are over its merged segments, so that "
          "whatever else the machine did in that time weighs on every target alike. The rate is 40 % "
          "of the slowest peer's 12 B figure-1 median (at most 5000/s), below every peer's maximum. "
          "Added latency = the proxy's percentile − direct's, within the round; median (min–max) "
          "over rounds, µs.\n")
md.append("| target | p50 µs | p99 µs | added p50 µs | added p99 µs | errors |\n|---|---:|---:|---:|---:|---:|")
p50, p99 = hist.percentiles_by_round(lat)
# A round whose direct p99 is off its median by more than half is dropped (p99 is noisier
# than throughput; only with 3 rounds or more), for both percentiles.
_, dropped = kept_rounds(p99, "direct", 0.5)
for k in dropped:
    p50.pop(k, None)
    p99.pop(k, None)
if dropped:
    notes_dropped.append(f"latency: round(s) {', '.join(map(str, dropped))} dropped (direct p99 off the median by more than 50 %)")
errs = {}
for r in lat:
    errs[r["target"]] = errs.get(r["target"], 0) + r.get("errors", 0) + r.get("non2xx", 0)
chart_groups = [("added p50", []), ("added p99", [])]
for t in TARGETS:
    if stats(p50, t) is None:
        continue
    a50 = stats(p50, t, "direct", diff=True) if t != "direct" else None
    a99 = stats(p99, t, "direct", diff=True) if t != "direct" else None
    md.append(f"| {t} | {fmt(stats(p50, t))} | {fmt(stats(p99, t))} | {spread(a50)} | {spread(a99)} | {errs.get(t, 0)} |")
    if t != "direct":
        chart_groups[0][1].append((t, a50))
        chart_groups[1][1].append((t, a99))
md.append("")
md.append(bar_chart("latency-added", f"Added latency at {rate} req/s (open loop)", "µs", chart_groups))
md.append("")
a50 = stats(p50, "proxyd", "direct", diff=True)
a99 = stats(p99, "proxyd", "direct", diff=True)
def latency_target(goal, added, limit):
    # Below zero the proxy's percentile beat the origin's own: noise (the direct run's tail was
    # worse that round), not a measurement of the proxy; no verdict.
    if added and added[0] < 0:
        target_row(goal, f"{fmt(added)} µs: below direct, noise", None)
        targets_rows[-1] = (goal, f"{fmt(added)} µs (below direct: noise, no verdict)", "–")
        return
    target_row(goal, f"{fmt(added)} µs", added and added[0] <= limit)


latency_target("added latency p50 ≤ 30 µs", a50, 30)
latency_target("added latency p99 ≤ 100 µs", a99, 100)

# Figure 4
md.append("## 4. HTTP/2 throughput\n")
md.append(f"`h2load -c16 -m16 -D {meta['seconds']} --warm-up-time 1` (16 connections × 16 streams), 12 B, "
          "prior-knowledge h2c and h2 over TLS (ALPN). Requests/s, ratio to nginx within the round "
          "(rounds dropped when nginx's figure strays; no direct: the origin speaks HTTP/1.1 only).\n")
md.append("| target | protocol | req/s | × nginx | errors |\n|---|---|---:|---:|---:|")
chart_groups = []
h2 = {}
for proto in ["h2c", "tls"]:
    rs = by_round(sel(fig="h2", proto=proto), lambda r: r["rps"] or None)
    rs, dropped = kept_rounds(rs, "nginx")
    if dropped:
        notes_dropped.append(f"HTTP/2 {proto}: round(s) {', '.join(map(str, dropped))} dropped")
    h2[proto] = rs
    e = {}
    for r in sel(fig="h2", proto=proto):
        e[r["target"]] = e.get(r["target"], 0) + r["errors"]
    bars = []
    for t in PROXIES:
        if stats(rs, t) is None:
            continue
        md.append(f"| {t} | {proto} | {fmt(stats(rs, t))} | {ratio(stats(rs, t, 'nginx'))} | {e.get(t, 0)} |")
        bars.append((t, stats(rs, t, "nginx")))
    chart_groups.append(("h2c" if proto == "h2c" else "h2 + TLS", bars))
md.append("")
md.append(bar_chart("h2-ratio", "HTTP/2 throughput, ratio to nginx", "× nginx", chart_groups, (1.0, "nginx")))
md.append("")
for proto in ["h2c", "tls"]:
    s = stats(h2[proto], "proxyd", "nginx")
    target_row(f"HTTP/2 ({proto}) throughput ≥ nginx", ratio(s), s and s[0] >= 1.0)

# Figure 5
md.append("## 5. TLS: new connections and keep-alive HTTPS\n")
md.append(f"New connections: `h2load --h1 -c16 -n {meta['newconn_requests']} -H 'Connection: close'` over "
          "TLS 1.3 (ECDSA P-256 certificate, X25519): the server closes after every response and "
          "h2load opens a new TCP connection and makes a new TLS handshake for the next request, "
          "so connections/s = requests/s. h2load offers the session ticket of its previous "
          "connection when the server issued one, so these are mostly resumed (PSK + ECDHE) "
          "handshakes, as a returning browser makes; every peer runs with its default ticket "
          "settings. CPU µs per connection from `/proc/PID/stat` as in figure 2. Keep-alive: "
          f"`wrk -t1 -c64 -d{meta['seconds']}s https://…/12` (HTTP/1.1 over TLS).\n")
md.append("| target | TLS | new conn/s | × nginx | CPU µs / new conn | keep-alive HTTPS req/s | × nginx |\n|---|---|---:|---:|---:|---:|---:|")
new = by_round(sel(fig="tls_new"), lambda r: r["rps"] or None)
new, dropped = kept_rounds(new, "nginx")
newcpu = by_round(sel(fig="tls_new"), lambda r: r["cpu_ticks"] / r["hz"] / r["requests"] * 1e6 if r["requests"] else None)
ka = by_round(sel(fig="tls_ka"), lambda r: r["rps"] or None)
ka, dropped2 = kept_rounds(ka, "nginx")
tlsv = {r["target"]: r.get("tls", "?") for r in sel(fig="tls_new")}
chart_groups = [("new connections", []), ("keep-alive HTTPS", [])]
for t in PROXIES:
    if stats(new, t) is None and stats(ka, t) is None:
        continue
    md.append(f"| {t} | {tlsv.get(t, '?')} | {fmt(stats(new, t))} | {ratio(stats(new, t, 'nginx'))} | "
              f"{spread(stats(newcpu, t))} | {fmt(stats(ka, t))} | {ratio(stats(ka, t, 'nginx'))} |")
    chart_groups[0][1].append((t, stats(new, t, "nginx")))
    chart_groups[1][1].append((t, stats(ka, t, "nginx")))
md.append("")
# Which rate this is: proxyd counts its full and resumed handshakes (proxy_tls_handshakes_total).
hs = [r for r in sel(fig="tls_new") if r["target"] == "proxyd" and "resumed_handshakes" in r]
full = sum(r.get("full_handshakes", 0) for r in hs)
resumed = sum(r.get("resumed_handshakes", 0) for r in hs)
if full + resumed > 0:
    md.append(f"Of proxyd's handshakes in these runs, {resumed * 100 / (full + resumed):.1f} % resumed a "
              f"session ({resumed:,} resumed, {full:,} full; `proxy_tls_handshakes_total`): the new "
              "connections/s above are a resumed-handshake rate, not a full-handshake one.\n")
# Full handshakes: the same run with session resumption off on every peer.
fullrate = by_round(sel(fig="tls_full"), lambda r: r["rps"] or None)
fullrate, _ = kept_rounds(fullrate, "nginx")
fullcpu = by_round(sel(fig="tls_full"), lambda r: r["cpu_ticks"] / r["hz"] / r["requests"] * 1e6 if r["requests"] else None)
if sel(fig="tls_full"):
    md.append("Full handshakes: the same run with session resumption off on every peer (proxyd "
              "`tls_session_resumption = false`; nginx `ssl_session_tickets off` and "
              "`ssl_session_cache off`; HAProxy `no-tls-tickets` and `tune.ssl.cachesize 0`; Caddy "
              "`session_tickets` disabled), each restarted for it: every connection costs a "
              "certificate signature (ECDSA P-256) and a key exchange (X25519).\n")
    md.append("| target | new conn/s, full handshakes | × nginx | CPU µs / full handshake |\n|---|---:|---:|---:|")
    full_group = ("new connections, full handshakes", [])
    chart_groups.append(full_group)
    for t in PROXIES:
        if stats(fullrate, t) is None:
            continue
        md.append(f"| {t} | {fmt(stats(fullrate, t))} | {ratio(stats(fullrate, t, 'nginx'))} | "
                  f"{spread(stats(fullcpu, t))} |")
        full_group[1].append((t, stats(fullrate, t, "nginx")))
    md.append("")
    hsf = [r for r in sel(fig="tls_full") if r["target"] == "proxyd" and "resumed_handshakes" in r]
    ffull = sum(r.get("full_handshakes", 0) for r in hsf)
    fres = sum(r.get("resumed_handshakes", 0) for r in hsf)
    if ffull + fres > 0:
        md.append(f"proxyd counted {ffull:,} full and {fres:,} resumed handshakes in these runs.\n")
md.append(bar_chart("tls-ratio", "TLS throughput, ratio to nginx", "× nginx", chart_groups, (1.0, "nginx")))
md.append("")
s = stats(new, "proxyd", "nginx")
target_row("new TLS connections per second ≥ nginx (mostly resumed)", ratio(s), s and s[0] >= 1.0)
s = stats(fullrate, "proxyd", "nginx")
target_row("new TLS connections per second ≥ nginx, full handshakes", ratio(s), s and s[0] >= 1.0)

# Figure 6
md.append("## 6. Memory per idle keep-alive client connection\n")
md.append("`holdconns` opens N connections, makes one `GET /12` on each and leaves them idle: HTTP/1.1 "
          "plaintext, HTTP/1.1 over TLS, and HTTP/2 with prior knowledge (h2c; holdconns answers the "
          "server's PINGs). "
          "RSS (VmRSS of the proxy's processes) 6 s after the last response, when idle upstream "
          "connections beyond each proxy's pool have closed (proxyd's `upstream_idle_timeout` is "
          "4 s), minus RSS just before, divided by N. KiB per connection. HAProxy needs two descriptors "
          "per connection under its `ulimit-n`, so where the open-files limit is too low for N it is "
          "measured with as many connections as it can hold (see the connections column). Each "
          "measurement starts a fresh proxy process (warmed up by 1 s of wrk over plain HTTP and over "
          "TLS), so memory an allocator kept from an earlier test cannot hide part of the cost.\n")
md.append("| target | plaintext KiB / conn | TLS KiB / conn | h2c KiB / conn | connections (plain / TLS / h2c) | RSS before, MiB (plain / TLS / h2c) |\n|---|---:|---:|---:|---:|---:|")
rss = {}
for r in sel(fig="rss"):
    per = (r["rss_after_kib"] - r["rss_before_kib"]) / r["conns"] if r["conns"] else None
    rss.setdefault(r["target"], {})[r["tls"]] = (per, r["conns"], r["wanted"], r["rss_before_kib"])
kinds = [("plain", "plaintext"), ("tls", "TLS"), ("h2c", "h2c")]
chart_groups = [(label, []) for _, label in kinds]
for t in PROXIES:
    if t not in rss:
        continue
    got = [rss[t].get(kind, (None, 0, 0, 0)) for kind, _ in kinds]
    md.append(f"| {t} | " + " | ".join(fmt(g[0], 2) for g in got) + " | "
              + " / ".join(f"{g[1]:,}" for g in got) + " | "
              + " / ".join(f"{g[3] / 1024:.1f}" for g in got) + " |")
    for group, g in zip(chart_groups, got):
        group[1].append((t, (g[0], g[0], g[0]) if g[0] is not None else None))
md.append("")
md.append(bar_chart("rss-per-conn", "RSS per idle keep-alive connection", "KiB / connection", chart_groups))
md.append("")
pr = rss.get("proxyd", {})
pp, pt, ph = (pr.get(kind, (None,))[0] for kind, _ in kinds)
target_row("RSS per idle keep-alive connection ≤ 2 kB plaintext", f"{fmt(pp, 2)} KiB", None if pp is None else pp * 1.024 <= 2)
target_row("RSS per idle keep-alive connection ≤ 8 kB TLS", f"{fmt(pt, 2)} KiB", None if pt is None else pt * 1.024 <= 8)
nh = rss.get("nginx", {}).get("h2c", (None,))[0]
target_row("RSS per idle HTTP/2 connection ≤ nginx's", f"{fmt(ph, 2)} KiB (nginx {fmt(nh, 2)})",
           None if ph is None or nh is None else ph <= nh)

# Figure 7
md.append("## 7. Reload → visible\n")
md.append(f"{meta['reloads']} reloads, each adding a route `/rN` that answers 200 (`respond` in proxyd, "
          "`return 200` in nginx, `respond` in Caddy). Time from starting the reload command to "
          "the first 200 on `/rN`, polled on new connections every 0.2 ms: proxyd `proxyctl reload`, "
          "nginx `nginx -s reload`, Caddy `POST /load` of the adapted JSON on its admin API "
          "(curl; the Caddyfile is adapted beforehand, untimed). Idle, and under load (wrk -c32 "
          "HTTP/1.1 plus h2load -c8 -m8 h2c, both saturating CPU 0; the probe runs there at nice −10). "
          "HAProxy is left out (its reload needs the master-worker mode; not asked).\n")
md.append("| target | load | p50 ms | p99 ms | max ms | not visible within 10 s | reload command failed |\n|---|---|---:|---:|---:|---:|---:|")
chart_groups = []
rl = {}
for load in ["idle", "load"]:
    bars = []
    for t in ["proxyd", "nginx", "caddy"]:
        rs = sel(fig="reload", target=t, load=load)
        if not rs:
            continue
        v = sorted(r["visible_us"] / 1000 for r in rs if r["visible_us"] is not None)
        to = sum(1 for r in rs if r["timeout"])
        bad = sum(1 for r in rs if r["reload_rc"] != 0)
        if v:
            q50 = v[int((len(v) - 1) * 0.5)]
            q99 = v[int((len(v) - 1) * 0.99)]
            rl[(t, load)] = (q50, q99)
            md.append(f"| {t} | {load} | {q50:.1f} | {q99:.1f} | {v[-1]:.1f} | {to} | {bad} |")
            bars.append((t, (q99, q50, q99)))
    chart_groups.append((f"{load} (p99; whisker to p50)", bars))
md.append("")
md.append(bar_chart("reload-visible", "Reload → first 200 on the new route", "ms", chart_groups))
md.append("")
q = rl.get(("proxyd", "idle"))
target_row("reload → visible p99 ≤ 10 ms idle", f"{q[1]:.1f} ms" if q else "–", q and q[1] <= 10)
q = rl.get(("proxyd", "load"))
target_row("reload → visible p99 ≤ 30 ms under load", f"{q[1]:.1f} ms" if q else "–", q and q[1] <= 30)

# Figure 8
md.append("## 8. Errors during reloads under load\n")
md.append("During the under-load reloads of figure 7 (wrk -t1 -c32 HTTP/1.1 keep-alive and h2load "
          "-c8 -m8 h2c, each run in 5 s pieces back to back until the last reload is done): wrk's "
          "socket errors (connect, read, write, timeout) plus non-2xx/3xx responses, and h2load's "
          "failed + errored + timed-out requests.\n")
md.append("| target | reloads | HTTP/1.1 errors / requests | HTTP/2 errors / requests | reloads took / load ran for |\n|---|---:|---:|---:|---:|")
for r in sel(fig="reload_errors"):
    md.append(f"| {r['target']} | {r['reloads']} | {r['h1_errors']:,} / {r['h1_requests']:,} | "
              f"{r['h2_errors']:,} / {r['h2_requests']:,} | {r['probe_seconds']} s / {r['load_seconds']} s |")
md.append("")
pe = [r for r in sel(fig="reload_errors", target="proxyd")]
if pe:
    e = pe[0]["h1_errors"] + pe[0]["h2_errors"]
    target_row("zero errors during reloads", f"{e} errors", e == 0)

# Figure 9
md.append("## 9. Upstream connections per 1,000,000 requests\n")
md.append("Connections the origin accepted (nginx `stub_status` \"accepts\", read before and after "
          "each figure-1 run, minus the reading's own connection) per request the proxy completed, "
          "summed over every pinned figure-1 run (all bodies; upstream keep-alive on everywhere: "
          "nginx `keepalive 64`, HAProxy `http-reuse always`, Caddy's default pool, proxyd's default "
          "pool of 128 idle connections). Includes connections opened when a run starts, since pools "
          "may shrink between runs.\n")
md.append("| target | requests | upstream connections | per 1,000,000 requests | reuse |\n|---|---:|---:|---:|---:|")
reuse = {}
for t in PROXIES:
    rs = [r for r in sel(fig="h1", mode="pinned", target=t) if "upstream_conns" in r]
    req = sum(r["requests"] for r in rs)
    con = sum(max(0, r["upstream_conns"]) for r in rs)
    if req:
        reuse[t] = 1 - con / req
        md.append(f"| {t} | {req:,} | {con:,} | {con / req * 1e6:,.1f} | {reuse[t] * 100:.3f} % |")
md.append("")
if "proxyd" in reuse:
    target_row("≥ 99.9 % upstream connection reuse", f"{reuse['proxyd'] * 100:.3f} %", reuse["proxyd"] >= 0.999)

# Whole machine
md.append("## Whole machine: scaling across cores\n")
md.append("No pinning: load generator, origin and proxy share both CPUs. proxyd "
          "`--worker-threads 2`, nginx `worker_processes 2` (the origin stays at one worker), "
          f"HAProxy `nbthread 2`, Caddy `GOMAXPROCS=2`; `wrk -t2 -c64 -d{meta['seconds']}s`, 12 B. "
          "Scaling = median whole-machine req/s ÷ median pinned req/s (figure 1).\n")
md.append("| target | req/s | × nginx | × direct | scaling vs pinned |\n|---|---:|---:|---:|---:|")
rs, _ = h1_rounds("whole", "12", lambda r: r["rps"] or None)
bars = []
for t in TARGETS:
    a = stats(rs, t)
    if a is None:
        continue
    pin = stats(h1["12"], t)
    sc = f"{a[0] / pin[0]:.2f}" if pin else "–"
    md.append(f"| {t} | {fmt(a)} | {ratio(stats(rs, t, 'nginx'))} | {ratio(stats(rs, t, 'direct'))} | {sc} |")
    bars.append((t, a))
md.append("")
md.append(bar_chart("whole-machine", "HTTP/1.1 12 B, whole machine (2 workers each)", "requests/s", [("12 B", bars)]))
md.append("")

# ---------------- assemble ----------------
history_default = ("<!-- history -->\n## What each change bought\n\n"
                   "_Written by hand; the generator keeps everything between the history markers._\n\n"
                   "| date | commit | change | figure | before → after |\n|---|---|---|---|---|\n"
                   "<!-- /history -->")
history = history_default
if os.path.exists(out_md):
    old = open(out_md).read()
    a, b = old.find("<!-- history -->"), old.find("<!-- /history -->")
    if a >= 0 and b > a:
        history = old[a:b + len("<!-- /history -->")]

quick = meta["quick"]
head = [
    "# Benchmarks",
    "",
    "<!-- Generated by bench/run.sh (bench/lib/report.py) from bench/results/; edit only the history section. -->",
    "",
    ("> **This is a quick run** (`bench/run.sh --quick`: "
     f"{meta['rounds']} rounds of {meta['seconds']} s, {meta['reloads']} reloads, "
     f"{meta['idle_conns']:,} idle connections). Numbers are indicative only; run "
     "`bench/run.sh` for the full figures.\n" if quick else ""),
    "## How to run",
    "",
    "```",
    "bench/run.sh           # everything, ~30-40 min on 2 cores; rewrites this file and docs/bench/*.svg",
    "bench/run.sh --quick   # ~8 min: 2 rounds, 3 s runs, 20 reloads, 2,000 idle connections",
    "```",
    "",
    "It installs nginx, haproxy, caddy, wrk and nghttp2-client (h2load) from Debian when missing, "
    "builds proxyd (`--profile production`: release with fat LTO) and `bench/tools` (openloop, holdconns) in release mode, starts every server in "
    "the foreground on free loopback ports with temp configs, and keeps raw results "
    "(JSON lines) in `bench/results/<date>/` (git-ignored).",
    "",
    "## Machine",
    "",
    "| | |\n|---|---|",
    f"| CPUs | {meta['nproc']} × {meta['cpu']} |",
    f"| memory | {meta['mem']} |",
    f"| kernel | {meta['kernel']} |",
    f"| proxyd | commit `{meta['commit']}` ({meta['commit_subject']}) |",
    f"| nginx | {meta['nginx']} |",
    f"| HAProxy | {meta['haproxy']} |",
    f"| Caddy | {meta['caddy']} |",
    f"| wrk / h2load | {meta['wrk']} / {meta['h2load']} |",
    f"| OpenSSL | {meta['openssl']} |",
    f"| date | {meta['date']}; run took {meta.get('run_seconds', 0) // 60} min |",
    f"| load average at start / end | {' '.join(meta['loadavg_start'])} / {' '.join(meta.get('loadavg_end', ['?']))} |",
    f"| open files limit | {meta['fd_limit']:,} |",
    "",
    "## Placement and method",
    "",
    "- **Placement** (`taskset`): load generators on CPU 0; the origin and the proxy under test "
    "share CPU 1, so the CPU a proxy spends shows as lost throughput for every proxy alike. "
    "\"direct\" is the load generator against the origin alone. Every proxy is one worker / one "
    "thread wide (proxyd `--worker-threads 1`, nginx `worker_processes 1`, HAProxy `nbthread 1`, "
    "Caddy `GOMAXPROCS=1`). A last section gives the whole machine to everyone.",
    "- **Origin**: nginx, one worker, static files of 12 B, 4 KiB and 64 KiB, `sendfile on`, "
    "access log off, `keepalive_requests` and `keepalive_timeout` raised so that it never closes a "
    "proxy's connection during a run; `stub_status` for figure 9.",
    "- **Peers**: nginx `proxy_http_version 1.1; proxy_set_header Connection \"\"; upstream { keepalive 64; }`, "
    "access log off (client and upstream `keepalive_requests` raised from their default of 1000, "
    "`ssl_protocols TLSv1.2 TLSv1.3` since 1.22's default lacks 1.3); HAProxy `http-reuse always`, "
    "no logging, `maxconn` at what the open-files limit allows; Caddy `reverse_proxy` with its "
    "default keep-alive, logs at ERROR, admin API on a free loopback port, h1 h2 h2c. proxyd: "
    "`[logging] level = \"warn\"`, `max_connections = 50000`, `max_connections_per_ip = 0`, "
    "`request_header_timeout = \"300s\"` (it is also the idle keep-alive timeout, figure 6 holds "
    "connections longer than the default 30 s), everything else default. Same `Host: bench.test` for all; TLS "
    "peers share one ECDSA P-256 certificate (SAN bench.test and 127.0.0.1: wrk sends the URL's "
    "IP as SNI, h2load none; proxyd `default_tls_site`, Caddy `default_sni`).",
    f"- **Rounds**: targets are interleaved (the order rotates each round) over {meta['rounds']} "
    "rounds. A round whose reference figure (direct; nginx where there is no direct) strays more "
    f"than {DROP:.0%} from the median of the rounds is dropped (only with 3 rounds or more). Tables give "
    "medians of within-round ratios with min–max; absolute figures are medians.",
    "",
]
busy = float(meta["loadavg_start"][0])
if busy > 0.5:
    head.append(f"> **The machine was not idle**: load average {busy:.2f} when the run started "
                f"(other processes competed for both CPUs; at the end: {' '.join(meta.get('loadavg_end', ['?']))}). "
                "Absolute numbers and tail latencies are disturbed; within-round ratios less so.\n")
if notes_dropped:
    head.append("Dropped rounds: " + "; ".join(notes_dropped) + ".\n")
else:
    head.append("No round was dropped.\n")

tg = ["## Targets (proxyd)", "",
      "| target | measured | |", "|---|---|---|"]
tg += [f"| {g} | {m} | {ok} |" for g, m, ok in targets_rows]
tg.append("")

text = "\n".join(head + tg + md + [history, ""])
with open(out_md, "w") as f:
    f.write(text)
print(f"wrote {out_md} and {chart_dir}/*.svg")
