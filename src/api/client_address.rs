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

    /// The peer, unless it is trusted: then the right-most address of
    /// `X-Forwarded-For` that is not a trusted proxy itself (the left-most when all
    /// are). Addresses further left were written by the client and prove nothing.
    pub fn resolve(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusts(peer) {
            return Some(peer);
        }
        let hops: Vec<IpAddr> = forwarded_for
            .unwrap_or_default()
            .split(',')
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        hops.iter().rev().find(|hop| !self.trusts(**hop)).or(hops.first()).copied().or(Some(peer))
    }

    /// Resolves the caller before `endpoint` runs.
    pub async fn call<E: Endpoint>(&self, endpoint: Arc<E>, mut request: Request) -> poem::Result<Response> {
        let peer = request.remote_addr().as_socket_addr().map(|address| address.ip());
        let forwarded_for = request.header("x-forwarded-for").map(str::to_string);
        let resolved = self.resolve(peer, forwarded_for.as_deref());
        request.extensions_mut().insert(ClientAddress(resolved));
        endpoint.call(request).await.map(IntoResponse::into_response)
    }
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
        assert_eq!(proxies.resolve(Some(ip("203.0.113.9")), Some("198.51.100.1")), Some(ip("203.0.113.9")));
        // Through a trusted proxy: the client it saw.
        assert_eq!(proxies.resolve(Some(ip("10.1.2.3")), Some("198.51.100.1")), Some(ip("198.51.100.1")));
        // A forged left part does not help: the right-most untrusted hop counts.
        assert_eq!(
            proxies.resolve(Some(ip("10.1.2.3")), Some("1.1.1.1, 198.51.100.1, 192.0.2.1")),
            Some(ip("198.51.100.1"))
        );
        // No header: the proxy itself.
        assert_eq!(proxies.resolve(Some(ip("10.1.2.3")), None), Some(ip("10.1.2.3")));
        assert!(parse_proxy("not an address").is_err());
        assert!(TrustedProxies::default().resolve(Some(ip("10.1.2.3")), Some("1.1.1.1")) == Some(ip("10.1.2.3")));
    }
}
