//! The tracer-nodes known now: a static list, or what discovery last saw. Requests take a
//! snapshot (an `Arc` of the list) and fan out to it; discovery swaps in a new list.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, RwLock,
};

/// One tracer-node: the name answers use for it, and the base URL its API is reached at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeEndpoint {
    /// How the node is named in `X-Tracer-Missing-Nodes`, logs and metrics: the Kubernetes
    /// node name when discovery knows it, else `host:port`.
    pub name: String,
    /// `http://host:port` or `https://host:port`, no path.
    pub url: String,
}

/// A `--nodes` entry that is not a node base URL.
#[derive(Debug, Clone, thiserror::Error)]
#[error("node URL {url:?}: {problem}")]
pub struct NodeUrlError {
    url: String,
    problem: &'static str,
}

impl NodeEndpoint {
    /// Parses `http(s)://host[:port][/]` (a clap value parser for `--nodes`).
    pub fn from_url(s: &str) -> Result<Self, NodeUrlError> {
        let bad = |problem| NodeUrlError { url: s.to_owned(), problem };
        let uri: hyper::Uri = s.trim().parse().map_err(|_| bad("not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some(s @ ("http" | "https")) => s,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or(bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials do not belong in the URL (use --node-token-file)"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("a node URL has no path or query"));
        }
        let port = authority.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        let host = authority.host();
        Ok(Self { name: format!("{host}:{port}"), url: format!("{scheme}://{host}:{port}") })
    }

    /// A discovered node: `address` (an IP, v6 without brackets) and `port`, named `name`.
    pub fn discovered(name: Option<&str>, address: &str, port: u16, tls: bool) -> Self {
        let host = if address.contains(':') { format!("[{address}]") } else { address.to_owned() };
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://{host}:{port}");
        let name = name.filter(|n| !n.is_empty()).map_or_else(|| format!("{host}:{port}"), str::to_owned);
        Self { name, url }
    }
}

/// The node list, and whether it is complete yet (discovery listed once).
#[derive(Debug)]
pub struct Membership {
    nodes: RwLock<Arc<Vec<NodeEndpoint>>>,
    synced: AtomicBool,
}

impl Membership {
    /// A fixed list, synced from the start.
    pub fn fixed(mut nodes: Vec<NodeEndpoint>) -> Arc<Self> {
        nodes.sort();
        Arc::new(Self { nodes: RwLock::new(Arc::new(nodes)), synced: AtomicBool::new(true) })
    }

    /// An empty list that discovery fills.
    pub fn discovered() -> Arc<Self> {
        Arc::new(Self { nodes: RwLock::new(Arc::new(Vec::new())), synced: AtomicBool::new(false) })
    }

    /// The nodes now.
    pub fn current(&self) -> Arc<Vec<NodeEndpoint>> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the list; answers whether it changed.
    pub fn replace(&self, mut nodes: Vec<NodeEndpoint>) -> bool {
        nodes.sort();
        nodes.dedup_by(|a, b| a.url == b.url);
        let mut current = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if **current == nodes {
            return false;
        }
        *current = Arc::new(nodes);
        true
    }

    /// Marks the list complete (discovery's initial list is in).
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Whether the list is complete.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_are_base_urls() {
        let n = NodeEndpoint::from_url("http://10.0.0.5:8080").expect("url");
        assert_eq!((n.name.as_str(), n.url.as_str()), ("10.0.0.5:8080", "http://10.0.0.5:8080"));
        assert_eq!(NodeEndpoint::from_url("https://node-b/").expect("url").url, "https://node-b:443");
        for bad in ["ftp://x", "node-b:8080", "http://", "http://a:1/v1", "http://u:p@a:1", "http://a:1/?x=1"] {
            assert!(NodeEndpoint::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn discovered_nodes_are_named_by_their_kubernetes_node() {
        let n = NodeEndpoint::discovered(Some("worker-1"), "fd00::5", 8080, true);
        assert_eq!((n.name.as_str(), n.url.as_str()), ("worker-1", "https://[fd00::5]:8080"));
        assert_eq!(NodeEndpoint::discovered(None, "10.1.2.3", 80, false).name, "10.1.2.3:80");
    }

    #[test]
    fn a_replaced_list_reports_changes_only() {
        let m = Membership::discovered();
        assert!(!m.is_synced());
        let a = NodeEndpoint::discovered(Some("a"), "10.0.0.1", 80, false);
        assert!(m.replace(vec![a.clone(), a.clone()]));
        assert_eq!(m.current().len(), 1, "deduplicated");
        assert!(!m.replace(vec![a]));
        assert!(m.replace(Vec::new()));
    }
}
