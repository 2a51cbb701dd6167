//! Resets netfilter's REJECT built on this host, seen on transmit.

use rst_trace_common::RstEvent;

use super::{
    Sentences,
    model::{Detail, DetailValue, Ep, Origin, Report, cond},
    tcp::ACK,
};

/// An RST built by netfilter (REJECT --reject-with tcp-reset), seen on transmit.
pub(super) fn explain_netfilter(ev: &RstEvent, words: Sentences, r: &mut Report) {
    r.state = None;
    r.socket_cookie = None;
    r.no_process_why = Some("firewall");
    r.detail
        .push((Detail::Ttl, DetailValue::Num(u64::from(ev.ttl))));
    r.origin = Some(Origin::Netfilter);
    r.condition = cond::FIREWALL_REJECT;
    // nf_reject_ip_tcphdr_put(): an RST|ACK answers a segment without ACK (a SYN: the client
    // sees ECONNREFUSED); a bare RST answers a segment with ACK (an established connection:
    // ECONNRESET).
    let (what, errno) = if ev.tcp_flags & ACK != 0 {
        ("connection attempt (SYN)", "ECONNREFUSED")
    } else {
        ("segment on an established connection", "ECONNRESET")
    };
    r.detail.push((
        Detail::Rejected,
        DetailValue::Text(
            if ev.tcp_flags & ACK != 0 {
                "SYN"
            } else {
                "ACK"
            }
            .into(),
        ),
    ));
    say!(
        words,
        r,
        "a netfilter rule on this host (REJECT --reject-with tcp-reset, iptables or nft) rejected the {what} from {remote} to {local} and sent RST in its place; {remote} sees {errno}",
        remote = Ep(r.remote),
        local = Ep(r.local)
    );
}
