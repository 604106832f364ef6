# Groups a flat perf profile (perf report --no-children --sort dso,sym -g none --stdio) of a proxy
# into where its time goes. Self time only: with LTO, inlined code is counted in its caller.
# Usage: perf report ... | awk -f bench/perf-groups.awk
function group(dso, sym) {
    if (sym ~ /^\[k\]/) {
        if (sym ~ /tcp|inet|ip_|skb|sock|net_|napi|loopback|dev_queue|netif|bbr|__dev|sk_/) return "kernel: TCP/IP over loopback"
        return "kernel: syscalls, waking the peer, copies, scheduler, epoll"
    }
    if (sym ~ /mi_|mimalloc|_int_malloc|_int_free|malloc|free|cfree|realloc/) return "user: allocator"
    if (sym ~ /memmove|memcpy|memset|memcmp/) return "user: memcpy/memcmp"
    if (dso ~ /^nginx/) {
        if (sym ~ /parse/) return "user: HTTP parsing"
        return "user: nginx other"
    }
    if (sym ~ /aes|Aes|cbc|base64|decrypt|crypto/) return "user: decryption (AES-CBC, base64)"
    if (sym ~ /serde|json/) return "user: JSON (serde_json)"
    if (sym ~ /moka|crossbeam|cht::|quanta|tagptr/) return "user: session store (moka)"
    if (sym ~ /hyper_util::client::legacy|hyper_util::.*pool|Checkout|ExtraEnvelope|Connected|Pooled/) return "user: hyper-util pooled client (pool, checkout, dispatch)"
    if (sym ~ /hyper::client|dispatch::Client|h1::role::Client/) return "user: hyper client connection"
    if (sym ~ /h1::role::Server|Http1Transaction|parse_headers|httparse/) return "user: HTTP parsing/encoding (hyper)"
    if (sym ~ /hyper::/) return "user: hyper other (dispatch, body channels)"
    if (sym ~ /http::header|HeaderMap|HeaderName|HeaderValue|hash_elem|sip::Hasher/) return "user: header maps (http)"
    if (sym ~ /tokio::time::|tokio::runtime::time::|clock_gettime|Instant|TimerEntry|Sleep|timer/) return "user: timers and clocks"
    if (sym ~ /tokio::/) return "user: tokio (tasks, wakers, I/O registration)"
    if (sym ~ /wxgate::|ConnService|StripIdentity|AccessLog|Identity|RouteLayer|Login|Phone|prometheus|metrics/) return "user: wxgate layers and metrics"
    if (sym ~ /bytes::/) return "user: bytes (refcounts)"
    if (sym ~ /writev|__libc_recv|recv|send|epoll_wait|read|write/) return "user: libc syscall wrappers"
    if (sym ~ /drop_in_place|Arc|alloc::|core::/) return "user: drops, Arc, core"
    return "user: other"
}
/^ *[0-9.]+%/ {
    pct = $1; sub(/%/, "", pct)
    dso = $2
    sym = ""
    for (i = 3; i <= NF; i++) sym = sym (i > 3 ? " " : "") $i
    g = group(dso, sym)
    total[g] += pct
    all += pct
}
END {
    for (g in total) printf "%6.2f%%  %s\n", total[g], g | "sort -rn"
}
