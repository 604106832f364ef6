# Summarizes bench/out/<run>/results.tsv (written by bench/run) into Markdown tables.
# Usage: awk -F'\t' -v tck=$(getconf CLK_TCK) -f bench/summarize.awk results.tsv
# Portable awk (mawk): no asort, no gensub.

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
    # Everything else the machine ran during the run: machine busy - proxy - upstream - fake - wrk.
    if ($18 != "") add(ocpu, key, ($17 * 1e6 / tck - ($12 == "-" ? 0 : $12) * 1e6 / tck - $13 * 1e6 / tck - $14 * 1e6 / tck - $18 * 1000) / $4)
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
END {
    nsc = split("get post session phone_enc phone_code login", scen, " ")
    label["get"] = "GET 1 KiB pass-through"
    label["post"] = "POST 600 B JSON pass-through"
    label["session"] = "GET + session token (identity injection)"
    label["phone_enc"] = "phone route, encryptedData (decrypt)"
    label["phone_code"] = "phone route, code (fake WeChat)"
    label["login"] = "login (fake WeChat)"
    split("DIRECT NGINX WXGATE", tgt, " ")

    print "| scenario | target | req/s median [min-max] | p50 | p99 | proxy CPU/req (user) | upstream CPU/req | fake WeChat CPU/req | wrk CPU/req | other load CPU/req | machine busy cores | proxy peak RSS | errors / requests |"
    print "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for (s = 1; s <= nsc; s++) {
        for (t = 1; t <= 3; t++) {
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
    for (s = 1; s <= 2; s++) {
        n = "NGINX" SUBSEP scen[s]; w = "WXGATE" SUBSEP scen[s]
        if (!(n in seen) || !(w in seen)) continue
        r = paired(r_rps, "WXGATE", scen[s], "NGINX", scen[s])
        printf "| %s: req/s WXGATE/NGINX >= 1.20 | %s | %s | %s |\n", label[scen[s]], fmt_ratio(r), fmt_ratio(ratio(m[w], m[n])), verdict(r >= 1.2)
        r = paired(r_cpu, "WXGATE", scen[s], "NGINX", scen[s])
        printf "| %s: proxy CPU/req WXGATE/NGINX <= 0.80 | %s | %s (%s vs %s us) | %s |\n", label[scen[s]], fmt_ratio(r), fmt_ratio(ratio(c[w], c[n])), fmt_us(c[w]), fmt_us(c[n]), verdict(r <= 0.8)
        r = paired(r_p99, "WXGATE", scen[s], "NGINX", scen[s])
        printf "| %s: p99 WXGATE/NGINX <= 1.00 | %s | %s (%.0f vs %.0f us) | %s |\n", label[scen[s]], fmt_ratio(r), fmt_ratio(ratio(q99[w], q99[n])), q99[w], q99[n], verdict(r <= 1.0)
    }
    base = "WXGATE" SUBSEP "get"
    w = "WXGATE" SUBSEP "session"
    if ((base in seen) && (w in seen)) {
        r = paired(r_rps, "WXGATE", "session", "WXGATE", "get")
        printf "| identity injection: req/s vs WXGATE GET pass-through >= 0.90 | %s | %s | %s |\n", fmt_ratio(r), fmt_ratio(ratio(m[w], m[base])), verdict(r >= 0.9)
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
}
