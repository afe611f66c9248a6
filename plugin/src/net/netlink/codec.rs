//! iotlan's rtnetlink codec: the five message kinds it exchanges, and nothing else linked in.

use netlink_packet_core::{
    DecodeError, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable, Parseable,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::RouteNetlinkMessage;

/// A request or reply of the five kinds iotlan exchanges (links, addresses, routes, rules and
/// neighbours), encoded and decoded by those kinds' own code. `RouteNetlinkMessage`'s encoding and
/// decoding dispatch over every rtnetlink family (traffic control's qdiscs, filters and actions,
/// neighbour tables, namespace IDs...), all of which would otherwise be linked into the binary.
pub(super) struct Rt(pub(super) RouteNetlinkMessage);

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWNEIGH: u16 = 28;
const RTM_NEWRULE: u16 = 32;

/// Applies `$f` to the message inside any variant iotlan sends.
macro_rules! sent {
    ($msg:expr, $m:ident => $f:expr) => {
        match $msg {
            RouteNetlinkMessage::NewLink($m)
            | RouteNetlinkMessage::SetLink($m)
            | RouteNetlinkMessage::GetLink($m)
            | RouteNetlinkMessage::DelLink($m) => $f,
            RouteNetlinkMessage::NewAddress($m)
            | RouteNetlinkMessage::GetAddress($m)
            | RouteNetlinkMessage::DelAddress($m) => $f,
            RouteNetlinkMessage::NewRoute($m)
            | RouteNetlinkMessage::GetRoute($m)
            | RouteNetlinkMessage::DelRoute($m) => $f,
            RouteNetlinkMessage::NewRule($m)
            | RouteNetlinkMessage::GetRule($m)
            | RouteNetlinkMessage::DelRule($m) => $f,
            RouteNetlinkMessage::NewNeighbour($m) | RouteNetlinkMessage::GetNeighbour($m) => $f,
            other => unreachable!(
                "iotlan sends link, address, route, rule and neighbour requests only, not {}",
                other.message_type()
            ),
        }
    };
}

impl NetlinkSerializable for Rt {
    fn message_type(&self) -> u16 {
        self.0.message_type()
    }

    fn buffer_len(&self) -> usize {
        sent!(&self.0, m => m.buffer_len())
    }

    fn serialize(&self, buffer: &mut [u8]) {
        sent!(&self.0, m => m.emit(buffer))
    }
}

impl NetlinkDeserializable for Rt {
    type Error = DecodeError;

    /// The replies to iotlan's requests: new links, addresses, routes, rules and neighbours (a
    /// dump's entries, an echo). Any other kind would be no answer to them: an error.
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(Rt(match header.message_type {
            RTM_NEWLINK => RouteNetlinkMessage::NewLink(LinkMessage::parse(payload)?),
            RTM_NEWADDR => RouteNetlinkMessage::NewAddress(AddressMessage::parse(payload)?),
            RTM_NEWROUTE => RouteNetlinkMessage::NewRoute(RouteMessage::parse(payload)?),
            RTM_NEWRULE => RouteNetlinkMessage::NewRule(
                netlink_packet_route::rule::RuleMessage::parse(payload)?,
            ),
            RTM_NEWNEIGH => RouteNetlinkMessage::NewNeighbour(
                netlink_packet_route::neighbour::NeighbourMessage::parse(payload)?,
            ),
            t => return Err(format!("unexpected rtnetlink message type {t}").into()),
        }))
    }
}
