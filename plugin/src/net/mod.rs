//! Kernel plumbing: rtnetlink, policy rules, ARP/NA packet sockets, per-interface sysctls and
//! network namespaces. Knows nothing of CNI.

pub mod netlink;
pub mod netns;
pub mod packet;
pub mod rules;
pub mod sysctl;
