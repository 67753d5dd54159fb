//! What the kernel saw of a flow, beside what the policies predict: drops with their
//! reasons, connection timeouts and refusals, summed over a flow's records, and the two
//! findings where the two disagree:
//!
//! - blocked although allowed: every NetworkPolicy in the snapshot allows the flow, yet its
//!   packets were dropped or its connections timed out. The most confusing case an
//!   operator meets: something outside the snapshot stopped it;
//! - denied but it went through: the snapshot's policies deny the flow, yet connections
//!   were established or it arrived: they are not enforced, or they changed.
//!
//! Used by `diff` and `report` (and so the same words in both).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::flowlog::{Direction, FlowRecord, FlowState, Protocol};

/// The kernel's facts of one flow, over its records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// TCP connections established (egress) or accepted (ingress).
    pub established: u64,
    pub refused: u64,
    pub timed_out: u64,
    /// Packets the kernel dropped.
    pub drops: u64,
    /// Of those, the ones nobody was told of: all but a TCP SYN to a port nobody listens
    /// on (NO_SOCKET), which the kernel answers with a reset (a refusal, not a block).
    #[serde(skip)]
    pub silent_drops: u64,
    pub drop_reasons: BTreeSet<String>,
    /// UDP datagrams that reached a socket of the receiving pod (ingress records).
    pub received: u64,
}

/// Where prediction and observation disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finding {
    BlockedAlthoughAllowed,
    DeniedButPassed,
}

impl Finding {
    pub fn as_str(self) -> &'static str {
        match self {
            Finding::BlockedAlthoughAllowed => "blocked_although_allowed",
            Finding::DeniedButPassed => "denied_but_passed",
        }
    }
}

impl Facts {
    /// Adds one record's counts.
    pub fn add(&mut self, r: &FlowRecord) {
        let accepted = r.direction == Some(Direction::Ingress)
            && r.protocol == Protocol::Tcp
            && r.state == Some(FlowState::Accepted);
        self.established += if accepted {
            r.count.max(r.established)
        } else {
            r.established
        };
        self.refused += r.refused;
        self.timed_out += r.timed_out;
        self.drops += r.drops;
        if !(r.protocol == Protocol::Tcp && r.drop_reason.as_deref() == Some("NO_SOCKET")) {
            self.silent_drops += r.drops;
        }
        if r.drops > 0 {
            if let Some(reason) = &r.drop_reason {
                if !self.drop_reasons.contains(reason) {
                    self.drop_reasons.insert(reason.clone());
                }
            }
        }
        if r.protocol == Protocol::Udp
            && r.direction == Some(Direction::Ingress)
            && r.state != Some(FlowState::Dropped)
        {
            self.received += r.count;
        }
    }

    /// Something stopped it on the way: silent drops, or connections that timed out.
    pub fn blocked(&self) -> bool {
        self.silent_drops > 0 || self.timed_out > 0
    }

    /// It got through at least once.
    pub fn passed(&self) -> bool {
        self.established > 0 || self.received > 0
    }

    pub fn finding(&self, allowed: bool) -> Option<Finding> {
        if allowed && self.blocked() {
            Some(Finding::BlockedAlthoughAllowed)
        } else if !allowed && self.passed() {
            Some(Finding::DeniedButPassed)
        } else {
            None
        }
    }

    /// "36 dropped (NETFILTER_DROP), 3 timed out, 2 connected"; "-" with nothing to say.
    pub fn text(&self) -> String {
        let mut parts = Vec::new();
        if self.drops > 0 {
            let reasons: Vec<&str> = self.drop_reasons.iter().map(String::as_str).collect();
            parts.push(if reasons.is_empty() {
                format!("{} dropped", self.drops)
            } else {
                format!("{} dropped ({})", self.drops, reasons.join(", "))
            });
        }
        if self.timed_out > 0 {
            parts.push(format!("{} timed out", self.timed_out));
        }
        if self.refused > 0 {
            parts.push(format!("{} refused", self.refused));
        }
        if self.established > 0 {
            parts.push(format!("{} connected", self.established));
        }
        if self.received > 0 {
            parts.push(format!("{} received", self.received));
        }
        if parts.is_empty() {
            "-".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// What most likely explains a finding, from the facts.
    pub fn likely_cause(&self, finding: Finding) -> String {
        match finding {
            Finding::BlockedAlthoughAllowed => {
                let netfilter = self.drop_reasons.iter().any(|r| r.starts_with("NETFILTER"));
                let bpf = self
                    .drop_reasons
                    .iter()
                    .any(|r| r.starts_with("TC_") || r.starts_with("BPF_") || r == "XDP");
                if netfilter {
                    "dropped by netfilter on this node although every NetworkPolicy in the snapshot allows it: a rule the snapshot does not hold (a CNI's own policy such as CiliumNetworkPolicy or Calico GlobalNetworkPolicy, an AdminNetworkPolicy or BaselineAdminNetworkPolicy, a host firewall), or a policy that changed since the snapshot".to_owned()
                } else if bpf {
                    "dropped by an eBPF program on this node (tc, cgroup or XDP: a CNI such as Cilium or Calico eBPF enforcing its own policy) although every NetworkPolicy in the snapshot allows it".to_owned()
                } else if self.drops > 0 {
                    "dropped by the kernel on this node although every NetworkPolicy in the snapshot allows it (see the drop reasons)".to_owned()
                } else {
                    "connections timed out with no drop seen on this node: dropped on the peer's side or on the way (a policy enforced at the peer's node, an AdminNetworkPolicy, a firewall outside the cluster), or the peer was down".to_owned()
                }
            }
            Finding::DeniedButPassed => "the snapshot's policies deny it, yet it went through: the CNI does not enforce NetworkPolicy, or the policies changed since the flow (a snapshot newer than the flow log)".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> FlowRecord {
        serde_json::from_str(json).expect("record")
    }

    #[test]
    fn findings_from_the_records() {
        let base = r#""src_ip":"10.244.1.30","dst_ip":"10.96.3.50","dst_port":80,"protocol":"TCP","direction":"egress""#;
        let mut dropped = Facts::default();
        dropped.add(&record(&format!(
            r#"{{{base},"state":"timed_out","count":2,"timed_out":2,"drops":3,"drop_reason":"NETFILTER_DROP"}}"#
        )));
        assert_eq!(dropped.text(), "3 dropped (NETFILTER_DROP), 2 timed out");
        assert_eq!(dropped.finding(true), Some(Finding::BlockedAlthoughAllowed));
        assert_eq!(
            dropped.finding(false),
            None,
            "denied and blocked: as predicted"
        );
        assert!(dropped
            .likely_cause(Finding::BlockedAlthoughAllowed)
            .contains("netfilter"));

        let mut timeouts = Facts::default();
        timeouts.add(&record(&format!(
            r#"{{{base},"state":"timed_out","count":1,"timed_out":1}}"#
        )));
        assert!(timeouts
            .likely_cause(Finding::BlockedAlthoughAllowed)
            .contains("no drop seen on this node"));

        let mut ok = Facts::default();
        ok.add(&record(&format!(
            r#"{{{base},"state":"established","count":4,"established":4}}"#
        )));
        ok.add(&record(&format!(
            r#"{{{base},"state":"refused","count":1,"refused":1}}"#
        )));
        assert_eq!(ok.text(), "1 refused, 4 connected");
        assert_eq!(
            ok.finding(true),
            None,
            "a refusal is the peer's answer, not a block"
        );
        assert_eq!(ok.finding(false), Some(Finding::DeniedButPassed));

        let mut udp_in = Facts::default();
        udp_in.add(&record(
            r#"{"src_ip":"10.244.1.30","dst_ip":"10.244.1.40","dst_port":5000,"protocol":"UDP","direction":"ingress","count":354}"#,
        ));
        assert_eq!(udp_in.text(), "354 received");
        assert_eq!(udp_in.finding(false), Some(Finding::DeniedButPassed));

        let mut udp_out = Facts::default();
        udp_out.add(&record(
            r#"{"src_ip":"10.244.1.30","dst_ip":"10.96.2.40","dst_port":5001,"protocol":"UDP","direction":"egress","state":"sent","count":354}"#,
        ));
        assert_eq!(
            udp_out.text(),
            "-",
            "sent datagrams say nothing of their fate"
        );
        assert_eq!(udp_out.finding(false), None);
        assert_eq!(udp_out.finding(true), None);

        // A SYN to a closed port: dropped as NO_SOCKET and answered with a reset.
        let mut closed = Facts::default();
        closed.add(&record(&format!(
            r#"{{{base},"state":"refused","count":1,"refused":1,"drops":1,"drop_reason":"NO_SOCKET"}}"#
        )));
        assert_eq!(closed.text(), "1 dropped (NO_SOCKET), 1 refused");
        assert_eq!(closed.finding(true), None, "a refusal, not a block");
    }
}
