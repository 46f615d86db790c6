//! Who is calling: the peer's address, or — when the peer is a proxy named in
//! `AUTHD_TRUSTED_PROXIES` — the address it forwarded for. Everything that counts by
//! address (rate limits, throttling, the events' `client_address`) reads this one.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use poem::{Endpoint, IntoResponse, Request, Response};

/// The resolved client address of a request (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub Option<IpAddr>);

impl ClientAddress {
    pub fn of(request: &Request) -> Option<IpAddr> {
        match request.extensions().get::<ClientAddress>() {
            Some(resolved) => resolved.0,
            None => request.remote_addr().as_socket_addr().map(|address| address.ip()),
        }
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<Vec<IpNet>>);

impl TrustedProxies {
    pub fn new(proxies: Vec<IpNet>) -> Self {
        Self(Arc::new(proxies))
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The peer, unless it is trusted: then, walking `X-Forwarded-For` (all its
    /// header lines, in order) from the right, the first hop that is not a trusted
    /// proxy. Addresses further left were written by the client and prove nothing;
    /// so does anything after a hop that does not parse, where the walk stops at the
    /// last trusted hop.
    pub fn resolve(&self, peer: Option<IpAddr>, forwarded_for: &[&str]) -> Option<IpAddr> {
        let peer = peer?;
        let mut client = peer;
        if !self.trusts(peer) {
            return Some(peer);
        }
        for hop in forwarded_for.iter().flat_map(|line| line.split(',')).rev() {
            match parse_hop(hop) {
                Some(address) => {
                    client = address;
                    if !self.trusts(address) {
                        break;
                    }
                }
                None => break,
            }
        }
        Some(client)
    }

    /// Resolves the caller before `endpoint` runs.
    pub async fn call<E: Endpoint>(&self, endpoint: Arc<E>, mut request: Request) -> poem::Result<Response> {
        let peer = request.remote_addr().as_socket_addr().map(|address| address.ip());
        let lines: Vec<String> = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok().map(str::to_string))
            .collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let resolved = self.resolve(peer, &lines);
        request.extensions_mut().insert(ClientAddress(resolved));
        endpoint.call(request).await.map(IntoResponse::into_response)
    }
}

/// One `X-Forwarded-For` hop: `address`, `address:port` or `[v6]:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|socket| socket.ip()))
        .or_else(|| hop.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).and_then(|v6| v6.parse().ok()))
}

/// `AUTHD_TRUSTED_PROXIES` entries: an address or a CIDR range.
pub fn parse_proxy(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is neither an address nor a CIDR range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn only_trusted_proxies_are_believed() {
        let proxies = TrustedProxies::new(vec![parse_proxy("10.0.0.0/8").expect("net"), parse_proxy("192.0.2.1").expect("ip")]);
        // An untrusted peer's header is ignored.
        assert_eq!(proxies.resolve(Some(ip("203.0.113.9")), &["198.51.100.1"]), Some(ip("203.0.113.9")));
        // Through a trusted proxy: the client it saw.
        assert_eq!(proxies.resolve(Some(ip("10.1.2.3")), &["198.51.100.1"]), Some(ip("198.51.100.1")));
        // A forged left part does not help: the right-most untrusted hop counts.
        assert_eq!(proxies.resolve(Some(ip("10.1.2.3")), &["1.1.1.1, 198.51.100.1, 192.0.2.1"]), Some(ip("198.51.100.1")));
        // Nor a forged first header line when the proxy adds its own line.
        assert_eq!(proxies.resolve(Some(ip("10.1.2.3")), &["1.1.1.1", "198.51.100.1"]), Some(ip("198.51.100.1")));
        // Ports are allowed; a hop that does not parse ends the walk (nothing left of
        // it is believed).
        assert_eq!(proxies.resolve(Some(ip("10.1.2.3")), &["198.51.100.1:4711"]), Some(ip("198.51.100.1")));
        assert_eq!(proxies.resolve(Some(ip("10.1.2.3")), &["[2001:db8::1]:443"]), Some(ip("2001:db8::1")));
        assert_eq!(proxies.resolve(Some(ip("10.1.2.3")), &["1.1.1.1, unknown"]), Some(ip("10.1.2.3")));
        // No header: the proxy itself.
        assert_eq!(proxies.resolve(Some(ip("10.1.2.3")), &[]), Some(ip("10.1.2.3")));
        assert!(parse_proxy("not an address").is_err());
        assert_eq!(TrustedProxies::default().resolve(Some(ip("10.1.2.3")), &["1.1.1.1"]), Some(ip("10.1.2.3")));
    }
}
