# Summarizes bench/out/<run>/results.tsv (written by bench/run) into Markdown tables.
# Usage: awk -F'\t' -v tck=$(getconf CLK_TCK) -f bench/summarize.awk results.tsv
# Portable awk (mawk): no asort, no gensub.
# Columns 19-20 (redis_ticks, redis_cmds) are absent in older results and "-" without Redis.

function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) {
        t = a[i] + 0
        for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]
        a[j + 1] = t
    }
    if (n == 0) return ""
    if (n % 2) return a[(n + 1) / 2] + 0
    return (a[n / 2] + a[n / 2 + 1]) / 2
}
function minof(list,   n, a, i, m) {
    n = split(list, a, " "); m = a[1] + 0
    for (i = 2; i <= n; i++) if (a[i] + 0 < m) m = a[i] + 0
    return m
}
function maxof(list,   n, a, i, m) {
    n = split(list, a, " "); m = a[1] + 0
    for (i = 2; i <= n; i++) if (a[i] + 0 > m) m = a[i] + 0
    return m
}
function add(arr, key, v) { arr[key] = (key in arr) ? arr[key] " " v : v }
function fmt_us(v) { return v == "" ? "-" : sprintf("%.1f", v) }
function ratio(a, b) { return (b + 0 == 0 || a == "" || b == "") ? "" : a / b }
function fmt_ratio(r) { return r == "" ? "-" : sprintf("%.2fx", r) }
function verdict(ok) { return ok ? "**met**" : "**not met**" }

NR == 1 { next }
{
    key = $2 SUBSEP $3
    seen[key] = 1
    secs = $5 / 1e6
    add(rps, key, $4 / secs)
    add(p50, key, $6)
    add(p99, key, $8)
    if ($12 != "-") add(pcpu, key, $12 * 1e6 / tck / $4)
    if ($16 != "-" && $16 != "") add(pucpu, key, $16 * 1e6 / tck / $4)
    if ($17 != "") { add(mcpu, key, $17 * 1e6 / tck / $4); add(mbusy, key, $17 / tck / secs) }
    has_redis = (NF >= 20 && $19 != "-" && $19 != "")
    rticks = has_redis ? $19 : 0
    if (has_redis) {
        add(rcpu, key, $19 * 1e6 / tck / $4)
        add(rcmd, key, $20 / $4)
        # Proxy and Redis together: what a request costs the shared-state path.
        if ($12 != "-") add(prcpu, key, ($12 + $19) * 1e6 / tck / $4)
    }
    # Everything else the machine ran during the run: machine busy - proxy - upstream - fake - wrk
    # (- redis-server, when one runs).
    if ($18 != "") add(ocpu, key, ($17 * 1e6 / tck - ($12 == "-" ? 0 : $12) * 1e6 / tck - $13 * 1e6 / tck - $14 * 1e6 / tck - rticks * 1e6 / tck - $18 * 1000) / $4)
    if ($18 != "") add(wcpu, key, $18 * 1000 / $4)
    add(ucpu, key, $13 * 1e6 / tck / $4)
    add(fcpu, key, $14 * 1e6 / tck / $4)
    if ($15 != "-" && $15 + 0 > peak[key] + 0) peak[key] = $15
    errors[key] += $10 + $11
    requests[key] += $4
    # Per round, for paired ratios (targets measured in the same round, seconds apart).
    r_rps[$1, $2, $3] = $4 / secs
    if ($12 != "-") r_cpu[$1, $2, $3] = $12 / $4
    r_p99[$1, $2, $3] = $8
    rounds[$1] = 1
}
# The median over rounds of a/b, for two (target, scenario) pairs measured in the same round.
function paired(arr, ta, sa, tb, sb,   r, list) {
    list = ""
    for (r in rounds) if (((r, ta, sa) in arr) && ((r, tb, sb) in arr) && arr[r, tb, sb] + 0 > 0)
        list = list " " arr[r, ta, sa] / arr[r, tb, sb]
    return list == "" ? "" : median(list)
}
# The median over rounds of a - b (same pairing).
function paired_diff(arr, ta, sa, tb, sb,   r, list) {
    list = ""
    for (r in rounds) if (((r, ta, sa) in arr) && ((r, tb, sb) in arr))
        list = list " " arr[r, ta, sa] - arr[r, tb, sb]
    return list == "" ? "" : median(list)
}
END {
    nsc = split("get access_log post session phone_enc phone_code login", scen, " ")
    label["get"] = "GET 1 KiB pass-through"
    label["access_log"] = "GET 1 KiB pass-through, access log on"
    label["post"] = "POST 600 B JSON pass-through"
    label["session"] = "GET + session token (identity injection)"
    label["phone_enc"] = "phone route, encryptedData (decrypt)"
    label["phone_code"] = "phone route, code (fake WeChat)"
    label["login"] = "login (fake WeChat)"
    ntg = split("DIRECT NGINX WXGATE NGINX_LOG WXGATE_LOG WXGATE_REDIS WXGATE_REDIS_NOL1", tgt, " ")

    print "| scenario | target | req/s median [min-max] | p50 | p99 | proxy CPU/req (user) | upstream CPU/req | fake WeChat CPU/req | wrk CPU/req | other load CPU/req | machine busy cores | proxy peak RSS | errors / requests |"
    print "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for (s = 1; s <= nsc; s++) {
        for (t = 1; t <= ntg; t++) {
            key = tgt[t] SUBSEP scen[s]
            if (!(key in seen)) continue
            m[key] = median(rps[key]); c[key] = (key in pcpu) ? median(pcpu[key]) : ""
            q99[key] = median(p99[key])
            f = median(fcpu[key])
            pu = (key in pucpu) ? " (" fmt_us(median(pucpu[key])) ")" : ""
            mc = (key in mbusy) ? sprintf("%.2f", median(mbusy[key])) : "-"
            wc = (key in wcpu) ? fmt_us(median(wcpu[key])) " us" : "-"
            oc = (key in ocpu) ? sprintf("%.1f us [%.1f-%.1f]", median(ocpu[key]), minof(ocpu[key]), maxof(ocpu[key])) : "-"
            printf "| %s | %s | %.0f [%.0f-%.0f] | %.0f us | %.0f us | %s | %s us | %s | %s | %s | %s | %s | %d / %d |\n",
                label[scen[s]], tgt[t], m[key], minof(rps[key]), maxof(rps[key]),
                median(p50[key]), q99[key], (c[key] == "" ? "-" : fmt_us(c[key]) " us" pu),
                fmt_us(median(ucpu[key])), (f > 0.05 ? fmt_us(f) " us" : "-"), wc, oc, mc,
                (key in peak ? sprintf("%.1f MiB", peak[key] / 1024) : "-"), errors[key], requests[key]
        }
    }

    print ""
    print "## Targets (issue 5, item 4)"
    print ""
    print "Verdicts use the median over rounds of the ratio within each round (targets run seconds apart, so"
    print "drift of the machine cancels); the ratio of the medians is shown beside it."
    print ""
    print "| target | paired ratio (median of rounds) | ratio of medians | verdict |"
    print "|---|---:|---:|---|"
    split("get post", pass, " ")
    for (i = 1; i <= 2; i++) {
        sc = pass[i]
        n = "NGINX" SUBSEP sc; w = "WXGATE" SUBSEP sc
        if (!(n in seen) || !(w in seen)) continue
        r = paired(r_rps, "WXGATE", sc, "NGINX", sc)
        printf "| %s: req/s WXGATE/NGINX >= 1.20 | %s | %s | %s |\n", label[sc], fmt_ratio(r), fmt_ratio(ratio(m[w], m[n])), verdict(r >= 1.2)
        r = paired(r_cpu, "WXGATE", sc, "NGINX", sc)
        printf "| %s: proxy CPU/req WXGATE/NGINX <= 0.80 | %s | %s (%s vs %s us) | %s |\n", label[sc], fmt_ratio(r), fmt_ratio(ratio(c[w], c[n])), fmt_us(c[w]), fmt_us(c[n]), verdict(r <= 0.8)
        r = paired(r_p99, "WXGATE", sc, "NGINX", sc)
        printf "| %s: p99 WXGATE/NGINX <= 1.00 | %s | %s (%.0f vs %.0f us) | %s |\n", label[sc], fmt_ratio(r), fmt_ratio(ratio(q99[w], q99[n])), q99[w], q99[n], verdict(r <= 1.0)
    }
    base = "WXGATE" SUBSEP "get"
    w = "WXGATE" SUBSEP "session"
    if ((base in seen) && (w in seen)) {
        r = paired(r_rps, "WXGATE", "session", "WXGATE", "get")
        printf "| identity injection: req/s vs WXGATE GET pass-through >= 0.90 | %s | %s | %s |\n", fmt_ratio(r), fmt_ratio(ratio(m[w], m[base])), verdict(r >= 0.9)
    }
    base = "WXGATE" SUBSEP "session"
    w = "WXGATE_REDIS" SUBSEP "session"
    if ((base in seen) && (w in seen)) {
        r = paired(r_rps, "WXGATE_REDIS", "session", "WXGATE", "session")
        printf "| identity injection, redis store (L1 warm): req/s WXGATE_REDIS/WXGATE (memory store) >= 0.95 | %s | %s | %s |\n", fmt_ratio(r), fmt_ratio(ratio(m[w], m[base])), verdict(r >= 0.95)
    }
    base = "WXGATE" SUBSEP "post"
    w = "WXGATE" SUBSEP "phone_enc"
    if ((base in seen) && (w in seen)) {
        r = paired(r_rps, "WXGATE", "phone_enc", "WXGATE", "post")
        printf "| encryptedData phone route: req/s vs WXGATE POST pass-through >= 0.90 | %s | %s | %s |\n", fmt_ratio(r), fmt_ratio(ratio(m[w], m[base])), verdict(r >= 0.9)
    }
    total = 0
    for (key in errors) total += errors[key]
    printf "| zero errors in every scenario | %d errors | | %s |\n", total, verdict(total == 0)

    redis_table()
    access_log_table()
}

# The Redis targets beside WXGATE (memory store), for each scenario they ran in.
function redis_table(   any, s, t, sc, key, vs, p, rs, rt) {
    any = 0
    for (key in seen) if (key ~ /^WXGATE_REDIS/) any = 1
    if (!any) return
    print ""
    print "## Shared state on Redis"
    print ""
    print "WXGATE_REDIS: session.store = \"redis\", l1_ttl 10s (sessions from the in-process cache); WXGATE_REDIS_NOL1:"
    print "l1_ttl 0s, every request reads Redis (an L1 miss, less the cache insert). Redis CPU: utime+stime of the"
    print "redis-server (all its threads) during the run, per request; Redis commands: the commands it processed"
    print "during the run, per request (about 0 when the in-process cache answers). Ratios to WXGATE are paired."
    print ""
    print "| scenario | target | req/s median [min-max] | req/s vs WXGATE (memory store) | p99 | proxy CPU µs/req | Redis CPU µs/req | proxy + Redis CPU µs/req | Redis commands/req |"
    print "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    split("session login", rs, " ")
    split("WXGATE WXGATE_REDIS WXGATE_REDIS_NOL1", rt, " ")
    for (s = 1; s <= 2; s++) {
        sc = rs[s]
        for (t = 1; t <= 3; t++) {
            key = rt[t] SUBSEP sc
            if (!(key in seen)) continue
            vs = (t == 1) ? "-" : fmt_ratio(paired(r_rps, rt[t], sc, "WXGATE", sc))
            p = (t > 1 && (key in rcpu))
            printf "| %s | %s | %.0f [%.0f-%.0f] | %s | %.0f us | %s | %s | %s | %s |\n", label[sc], rt[t],
                m[key], minof(rps[key]), maxof(rps[key]), vs, q99[key], fmt_us(c[key]),
                (p ? fmt_us(median(rcpu[key])) : "-"), (p && (key in prcpu) ? fmt_us(median(prcpu[key])) : "-"),
                (p ? sprintf("%.2f", median(rcmd[key])) : "-")
        }
    }
}

# Each proxy with its access log on, against itself without it (its GET pass-through rows, run
# seconds before in the same round).
function access_log_table(   t, lt, bt, key, base, n, w) {
    if (!(("NGINX_LOG" SUBSEP "access_log") in seen) && !(("WXGATE_LOG" SUBSEP "access_log") in seen)) return
    print ""
    print "## Access log"
    print ""
    print "NGINX_LOG: NGINX with `access_log <file> combined buffer=64k flush=1s`; WXGATE_LOG: WXGATE with RUST_LOG=info"
    print "(its access log, stderr to a file). Each against the same proxy without an access log (GET pass-through,"
    print "same round; paired)."
    print ""
    print "| target | req/s median [min-max] | req/s vs no access log | p99 | p99 vs no access log | proxy CPU µs/req | added by the access log, µs/req |"
    print "|---|---:|---:|---:|---:|---:|---:|"
    split("NGINX_LOG WXGATE_LOG", lt, " ")
    split("NGINX WXGATE", bt, " ")
    for (t = 1; t <= 2; t++) {
        key = lt[t] SUBSEP "access_log"
        if (!(key in seen)) continue
        base = bt[t] SUBSEP "get"
        printf "| %s | %.0f [%.0f-%.0f] | %s | %.0f us | %s | %s | %s |\n", lt[t], m[key], minof(rps[key]), maxof(rps[key]),
            ((base in seen) ? fmt_ratio(paired(r_rps, lt[t], "access_log", bt[t], "get")) : "-"), q99[key],
            ((base in seen) ? fmt_ratio(paired(r_p99, lt[t], "access_log", bt[t], "get")) : "-"), fmt_us(c[key]),
            ((base in seen) && (key in pcpu) ? sprintf("%+.1f", paired_diff(r_cpu, lt[t], "access_log", bt[t], "get") * 1e6 / tck) : "-")
    }
    n = "NGINX_LOG" SUBSEP "access_log"; w = "WXGATE_LOG" SUBSEP "access_log"
    if ((n in seen) && (w in seen)) {
        print ""
        printf "With both access logs on, WXGATE_LOG/NGINX_LOG: req/s %s, proxy CPU/req %s, p99 %s (paired).\n",
            fmt_ratio(paired(r_rps, "WXGATE_LOG", "access_log", "NGINX_LOG", "access_log")),
            fmt_ratio(paired(r_cpu, "WXGATE_LOG", "access_log", "NGINX_LOG", "access_log")),
            fmt_ratio(paired(r_p99, "WXGATE_LOG", "access_log", "NGINX_LOG", "access_log"))
    }
}
