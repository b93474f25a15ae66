//! Mutual TLS on every gRPC link, and the roles a certificate grants (DESIGN §10).
//!
//! Every process holds the deployment's CA certificate and a certificate and key of its own,
//! signed by that CA. A server requires a client certificate: the TLS handshake refuses a peer
//! without one, or with one the CA did not sign. Then each service admits only the roles it
//! serves ([`Guard`]). The role is a URI subject-alternative name, `urn:budget:role:<role>`,
//! written by [`Authority::issue`] (`budgetctl certs`). A coordinator's or an edge's certificate
//! also names its region, `urn:budget:region:<region>`: Raft admits only coordinators of its
//! own region, the lease API only edges of its own region, and region sync only a peer
//! region's coordinators speaking for that region. So one region's certificate cannot write
//! another region's log or counter rows, nor hold its leases.
//!
//! Plaintext exists for local development and tests, and only when a flag says so:
//! [`Transport::from_config`] refuses a process that has neither certificates nor the flag.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

/// What a certificate lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A coordinator node: Raft between the nodes of a region, and region sync between regions.
    Coordinator,
    /// An edge bidder: the lease API only.
    Edge,
    /// An operator (`budgetctl`): the admin API, the audit API and the lease API (`budgetctl`
    /// lists campaigns through it).
    Operator,
    /// An auditor: reads the financial log through the audit API, nothing else.
    Auditor,
}

impl Role {
    /// Every role, in the order `--help` lists them.
    pub const ALL: [Role; 4] = [Role::Coordinator, Role::Edge, Role::Operator, Role::Auditor];

    /// The role's name, as written in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Edge => "edge",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }

    /// The URI subject-alternative name that grants this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Role, TlsError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                TlsError(format!(
                    "unknown role {s:?} (coordinator, edge, operator, auditor)"
                ))
            })
    }
}

/// A certificate grants the role named after this prefix in a URI subject-alternative name.
pub const ROLE_URI_PREFIX: &str = "urn:budget:role:";

/// A coordinator's or an edge's certificate names its region after this prefix in a URI
/// subject-alternative name.
pub const REGION_URI_PREFIX: &str = "urn:budget:region:";

/// Who a certificate says its holder is. A [`Guard`] puts the caller's into the request's
/// extensions, for services that check more than the role (region sync).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The role it grants.
    pub role: Role,
    /// The subject's common name.
    pub name: String,
    /// The region, for a coordinator or an edge.
    pub region: Option<String>,
}

impl Role {
    /// True for the roles whose certificates name a region: coordinator and edge. Operators
    /// and auditors serve the whole deployment.
    pub fn has_region(self) -> bool {
        matches!(self, Role::Coordinator | Role::Edge)
    }
}

/// A TLS setting that cannot be used, with what is wrong in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

fn err(s: impl Into<String>) -> TlsError {
    TlsError(s.into())
}

/// The `[tls]` section of a configuration file: where the PEM files are.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// The CA certificate that signed every certificate of the deployment.
    pub ca_file: PathBuf,
    /// This process's certificate.
    pub cert_file: PathBuf,
    /// This process's private key.
    pub key_file: PathBuf,
}

impl TlsFiles {
    fn is_empty(&self) -> bool {
        self.ca_file.as_os_str().is_empty()
            && self.cert_file.as_os_str().is_empty()
            && self.key_file.as_os_str().is_empty()
    }
}

/// How a process's gRPC links are carried: mutual TLS, or plaintext because a flag said so.
#[derive(Clone)]
pub enum Transport {
    /// No TLS: any peer that can connect is served, with every role. Local development only.
    Plaintext,
    /// Mutual TLS with the deployment's CA.
    Mtls(Arc<Mtls>),
}

/// The loaded certificates of one process.
pub struct Mtls {
    ca: Certificate,
    identity: Identity,
    role: Role,
    name: String,
    region: Option<String>,
    /// When the certificate expires, seconds since the Unix epoch.
    not_after: i64,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Plaintext => f.write_str("Plaintext"),
            Transport::Mtls(m) => write!(f, "Mtls({} {:?})", m.role, m.name),
        }
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    if path.as_os_str().is_empty() {
        return Err(err(format!("[tls] {what} is not set")));
    }
    std::fs::read(path).map_err(|e| err(format!("[tls] {what} {}: {e}", path.display())))
}

impl Transport {
    /// The transport a process's configuration asks for. `expect` is the role this process
    /// must hold (a coordinator refuses to start with an edge's certificate).
    ///
    /// Exactly one of the two must be given: certificate files, or `insecure_plaintext`.
    pub fn from_config(
        files: &TlsFiles,
        insecure_plaintext: bool,
        expect: &[Role],
    ) -> Result<Transport, TlsError> {
        match (files.is_empty(), insecure_plaintext) {
            (true, true) => Ok(Transport::Plaintext),
            (false, true) => Err(err(
                "both [tls] files and --insecure-plaintext are given: choose one",
            )),
            (true, false) => Err(err(
                "no TLS configured: set [tls] ca_file, cert_file and key_file (see `budgetctl \
                 certs --help`), or pass --insecure-plaintext for local development",
            )),
            (false, false) => {
                let ca = read("ca_file", &files.ca_file)?;
                let cert = read("cert_file", &files.cert_file)?;
                let key = read("key_file", &files.key_file)?;
                // Name the file the problem is in (the key's, the CA's, else the certificate's).
                Transport::from_pem(&ca, &cert, &key, expect).map_err(|e| {
                    let (file, what) = if e.0.contains("the key") {
                        (&files.key_file, "key_file")
                    } else if e.0.contains("the CA") {
                        (&files.ca_file, "ca_file")
                    } else {
                        (&files.cert_file, "cert_file")
                    };
                    err(format!("[tls] {what} {}: {e}", file.display()))
                })
            }
        }
    }

    /// Mutual TLS from PEM text. The certificate must grant one of `expect` (any role if empty).
    pub fn from_pem(
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
        expect: &[Role],
    ) -> Result<Transport, TlsError> {
        let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem)
            .map_err(|e| err(format!("the CA certificate is not PEM: {e}")))?;
        let ca_cert = ca
            .parse_x509()
            .map_err(|e| err(format!("the CA certificate does not parse: {e}")))?;
        if !ca_cert.is_ca() {
            return Err(err(format!(
                "the CA file holds a certificate that is not a CA ({}): give the deployment's \
                 ca.pem",
                ca_cert.subject()
            )));
        }
        let (_, leaf) = x509_parser::pem::parse_x509_pem(cert_pem)
            .map_err(|e| err(format!("the certificate is not PEM: {e}")))?;
        let leaf_cert = leaf
            .parse_x509()
            .map_err(|e| err(format!("the certificate does not parse: {e}")))?;
        let key = rcgen::KeyPair::from_pem(&String::from_utf8_lossy(key_pem))
            .map_err(|e| err(format!("the key is not a PEM private key: {e}")))?;
        if key.public_key_raw() != &*leaf_cert.public_key().subject_public_key.data {
            return Err(err(format!(
                "the key does not match the certificate of {} (it is another certificate's key)",
                leaf_cert.subject()
            )));
        }
        let not_after = leaf_cert.validity().not_after.timestamp();
        let Peer { role, name, region } = peer_of(&leaf.contents)?;
        if !expect.is_empty() && !expect.contains(&role) {
            let want: Vec<&str> = expect.iter().map(|r| r.as_str()).collect();
            return Err(err(format!(
                "the certificate of {name:?} grants the role {role}; this process needs {}",
                want.join(" or ")
            )));
        }
        Ok(Transport::Mtls(Arc::new(Mtls {
            ca: Certificate::from_pem(ca_pem),
            identity: Identity::from_pem(cert_pem, key_pem),
            role,
            name,
            region,
            not_after,
        })))
    }

    /// When this process's certificate expires, in seconds since the Unix epoch (`None` in
    /// plaintext): exported as a metric, so that an alert fires in time.
    pub fn certificate_expiry(&self) -> Option<i64> {
        match self {
            Transport::Plaintext => None,
            Transport::Mtls(m) => Some(m.not_after),
        }
    }

    /// True for mutual TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Mtls(_))
    }

    /// The role this process's certificate grants (`None` in plaintext).
    pub fn role(&self) -> Option<Role> {
        match self {
            Transport::Plaintext => None,
            Transport::Mtls(m) => Some(m.role),
        }
    }

    /// The region this process's certificate names (`None` in plaintext, and for operators
    /// and auditors).
    pub fn region(&self) -> Option<&str> {
        match self {
            Transport::Plaintext => None,
            Transport::Mtls(m) => m.region.as_deref(),
        }
    }

    /// A client endpoint for `addr` (`HOST:PORT`, or a URL whose scheme agrees with the
    /// transport: `https` for TLS, `http` for plaintext).
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, TlsError> {
        let scheme = if self.is_tls() { "https" } else { "http" };
        let url = match addr.split_once("://") {
            None => format!("{scheme}://{addr}"),
            Some((s, _)) if s == scheme => addr.to_string(),
            Some((s, _)) => {
                return Err(err(format!(
                    "{addr}: the scheme {s} does not match the transport ({}); give HOST:PORT",
                    if self.is_tls() {
                        "mutual TLS"
                    } else {
                        "plaintext"
                    }
                )));
            }
        };
        let endpoint = Endpoint::from_shared(url).map_err(|e| err(format!("{addr}: {e}")))?;
        match self {
            Transport::Plaintext => Ok(endpoint),
            Transport::Mtls(m) => endpoint
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(m.ca.clone())
                        .identity(m.identity.clone()),
                )
                .map_err(|e| err(format!("{addr}: {e}"))),
        }
    }

    /// `builder` with this transport's server side: with TLS, clients must present a
    /// certificate that the CA signed.
    pub fn server(&self, builder: Server) -> Result<Server, TlsError> {
        match self {
            Transport::Plaintext => Ok(builder),
            Transport::Mtls(m) => builder
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(m.identity.clone())
                        .client_ca_root(m.ca.clone())
                        // A peer that opens a connection and never finishes the handshake does
                        // not hold it for ever.
                        .timeout(std::time::Duration::from_secs(10)),
                )
                .map_err(|e| err(format!("server TLS: {e}"))),
        }
    }

    /// An interceptor that admits only peers whose certificate grants one of `allowed`. In
    /// plaintext it admits everyone: there is nothing to check.
    pub fn guard(&self, allowed: &'static [Role]) -> Guard {
        Guard {
            enforce: self.is_tls(),
            allowed,
            region: None,
        }
    }

    /// Like [`Transport::guard`], and a caller whose certificate names a region (a coordinator
    /// or an edge) must name `region`.
    pub fn guard_in_region(&self, allowed: &'static [Role], region: &str) -> Guard {
        Guard {
            region: Some(Arc::from(region)),
            ..self.guard(allowed)
        }
    }
}

/// Reads the role from a DER certificate: the one `urn:budget:role:` URI among its
/// subject-alternative names. Also returns the subject's common name, for messages.
pub fn role_of(der: &[u8]) -> Result<(Role, String), TlsError> {
    peer_of(der).map(|p| (p.role, p.name))
}

/// Reads who a DER certificate says its holder is: its role (the one `urn:budget:role:` URI),
/// its common name, and its region (the one `urn:budget:region:` URI, which a coordinator's
/// and an edge's certificate must have and the others must not).
pub fn peer_of(der: &[u8]) -> Result<Peer, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| err(format!("the certificate does not parse: {e}")))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| err(format!("{name:?}: subject alternative names: {e}")))?;
    let uris = |prefix: &'static str| {
        sans.iter()
            .flat_map(|s| s.value.general_names.iter())
            .filter_map(move |g| match g {
                x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix(prefix),
                _ => None,
            })
    };
    let mut roles = uris(ROLE_URI_PREFIX);
    let role: Role = match (roles.next(), roles.next()) {
        (Some(r), None) => r.parse()?,
        (None, _) => return Err(err(format!("{name:?}: the certificate grants no role"))),
        (Some(_), Some(_)) => {
            return Err(err(format!(
                "{name:?}: the certificate grants more than one role"
            )));
        }
    };
    let mut regions = uris(REGION_URI_PREFIX);
    let region = match (regions.next(), regions.next(), role.has_region()) {
        (Some(r), None, true) => Some(r.to_string()),
        (None, _, true) => {
            return Err(err(format!(
                "{name:?}: a certificate of role {role} must name its region \
                 (budgetctl certs issue --region)"
            )));
        }
        (None, _, false) => None,
        (Some(_), Some(_), _) => {
            return Err(err(format!(
                "{name:?}: the certificate names more than one region"
            )));
        }
        (Some(_), None, false) => {
            return Err(err(format!(
                "{name:?}: a certificate of role {role} names no region"
            )));
        }
    };
    Ok(Peer { role, name, region })
}

/// What `budgetctl certs show` prints about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    /// The subject's common name.
    pub name: String,
    /// The role it grants.
    pub role: Role,
    /// The region, for a coordinator.
    pub region: Option<String>,
    /// Host names and IP addresses it is valid for.
    pub hosts: Vec<String>,
    /// Valid from (UTC).
    pub not_before: String,
    /// Valid until (UTC).
    pub not_after: String,
}

fn parse_pem(pem: &[u8]) -> Result<x509_parser::pem::Pem, TlsError> {
    x509_parser::pem::parse_x509_pem(pem)
        .map(|(_, p)| p)
        .map_err(|e| err(format!("not a PEM certificate: {e}")))
}

/// Reads a PEM certificate's name, role, hosts and validity.
pub fn describe(pem: &[u8]) -> Result<Described, TlsError> {
    let pem = parse_pem(pem)?;
    let Peer { role, name, region } = peer_of(&pem.contents)?;
    let cert = pem
        .parse_x509()
        .map_err(|e| err(format!("the certificate does not parse: {e}")))?;
    let mut hosts = Vec::new();
    if let Ok(Some(sans)) = cert.subject_alternative_name() {
        for g in &sans.value.general_names {
            match g {
                x509_parser::extensions::GeneralName::DNSName(d) => hosts.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        hosts.push(std::net::IpAddr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        hosts.push(std::net::IpAddr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let v = cert.validity();
    Ok(Described {
        name,
        role,
        region,
        hosts,
        not_before: v.not_before.to_string(),
        not_after: v.not_after.to_string(),
    })
}

/// Checks that the CA in `ca_pem` signed the certificate in `cert_pem`.
pub fn check_signed_by(cert_pem: &[u8], ca_pem: &[u8]) -> Result<(), TlsError> {
    let (cert, ca) = (parse_pem(cert_pem)?, parse_pem(ca_pem)?);
    let cert = cert
        .parse_x509()
        .map_err(|e| err(format!("the certificate does not parse: {e}")))?;
    let ca = ca
        .parse_x509()
        .map_err(|e| err(format!("the CA certificate does not parse: {e}")))?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| err("this CA did not sign the certificate"))
}

/// A gRPC interceptor that admits only the roles a service serves ([`Transport::guard`]).
#[derive(Clone, Debug)]
pub struct Guard {
    enforce: bool,
    allowed: &'static [Role],
    region: Option<Arc<str>>,
}

impl tonic::service::Interceptor for Guard {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if !self.enforce {
            return Ok(request);
        }
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let peer = peer_of(leaf).map_err(|e| Status::permission_denied(e.0))?;
        if !self.allowed.contains(&peer.role) {
            return Err(Status::permission_denied(format!(
                "{:?} holds the role {}, which may not call this service",
                peer.name, peer.role
            )));
        }
        if let (Some(want), Some(theirs)) = (&self.region, &peer.region)
            && theirs.as_str() != &**want
        {
            return Err(Status::permission_denied(format!(
                "{:?} is a {} of region {theirs}; this service serves region {want} only",
                peer.name, peer.role
            )));
        }
        request.extensions_mut().insert(peer);
        Ok(request)
    }
}

/// A certificate authority: makes the deployment's CA and signs each process's certificate.
pub struct Authority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert_pem: String,
}

/// A certificate and its private key, both PEM.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key. Keep it readable by the process's own user only.
    pub key_pem: String,
}

impl Issued {
    /// Writes the pair to `dir/NAME.pem` and `dir/NAME.key` (mode 0600), replacing what is
    /// there (tests and harnesses; `budgetctl certs` refuses to overwrite). Returns the paths.
    pub fn write_to(&self, dir: &Path, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, &self.cert_pem)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key)?
            .write_all(self.key_pem.as_bytes())?;
        Ok((cert, key))
    }
}

/// When a certificate is valid, in whole UTC days.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    from: (i32, u8, u8),
    until: (i32, u8, u8),
}

impl Validity {
    /// From yesterday (a peer whose clock is a little behind still accepts it) to `days` from
    /// today.
    pub fn days(days: u32) -> Result<Validity, TlsError> {
        let today = jiff::Zoned::now()
            .with_time_zone(jiff::tz::TimeZone::UTC)
            .date();
        let shift = |n: i64| {
            today
                .checked_add(jiff::Span::new().days(n))
                .map(|d| (i32::from(d.year()), d.month() as u8, d.day() as u8))
                .map_err(|e| err(format!("{days} days: {e}")))
        };
        Ok(Validity {
            from: shift(-1)?,
            until: shift(i64::from(days))?,
        })
    }

    /// 1975 to 4096: for test harnesses that move clocks by years. Never for a deployment.
    pub fn unbounded() -> Validity {
        Validity {
            from: (1975, 1, 1),
            until: (4096, 1, 1),
        }
    }

    fn apply(self, params: &mut rcgen::CertificateParams) {
        params.not_before = rcgen::date_time_ymd(self.from.0, self.from.1, self.from.2);
        params.not_after = rcgen::date_time_ymd(self.until.0, self.until.1, self.until.2);
    }
}

fn gen_err(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| err(format!("{what}: {e}"))
}

impl Authority {
    /// A new self-signed CA named `name`.
    pub fn create(name: &str, valid: Validity) -> Result<Authority, TlsError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(gen_err("CA parameters"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        valid.apply(&mut params);
        let key = rcgen::KeyPair::generate().map_err(gen_err("CA key"))?;
        let cert = params
            .self_signed(&key)
            .map_err(gen_err("CA certificate"))?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// The CA from its certificate and key (PEM), to sign more certificates with it.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Authority, TlsError> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(gen_err("the CA key"))?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(gen_err("the CA certificate"))?;
        Ok(Authority {
            issuer,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA's certificate: every process needs it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key: keep it off the hosts.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for `name` granting `role`, valid for the host names and IP addresses in
    /// `hosts` (a server's clients check that the address they dialled is among them). A
    /// coordinator's and an edge's name their `region`; an operator's and an auditor's none.
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        region: Option<&str>,
        hosts: &[String],
        valid: Validity,
    ) -> Result<Issued, TlsError> {
        let mut params =
            rcgen::CertificateParams::new(hosts.to_vec()).map_err(gen_err("host names"))?;
        let region_uri = match (role.has_region(), region) {
            (true, Some(r)) if !r.is_empty() => Some(format!("{REGION_URI_PREFIX}{r}")),
            (true, _) => {
                return Err(err(format!(
                    "{name:?}: a certificate of role {role} must name its region (--region)"
                )));
            }
            (false, None) => None,
            (false, Some(_)) => {
                return Err(err(format!(
                    "{name:?}: a certificate of role {role} names no region"
                )));
            }
        };
        for uri in std::iter::once(role.uri()).chain(region_uri) {
            let uri = rcgen::string::Ia5String::try_from(uri)
                .map_err(|e| err(format!("URI name: {e}")))?;
            params.subject_alt_names.push(rcgen::SanType::URI(uri));
        }
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if role == Role::Coordinator {
            // Only coordinators serve; the other roles are clients.
            params
                .extended_key_usages
                .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        }
        valid.apply(&mut params);
        let key = rcgen::KeyPair::generate().map_err(gen_err("key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(gen_err("certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> Authority {
        Authority::create("test CA", Validity::days(30).unwrap()).unwrap()
    }

    #[test]
    fn an_issued_certificate_carries_its_role_and_name() {
        let ca = ca();
        for role in Role::ALL {
            let region = role.has_region().then_some("eu-1");
            let c = ca
                .issue(
                    role,
                    "node-1",
                    region,
                    &["127.0.0.1".into()],
                    Validity::days(2).unwrap(),
                )
                .unwrap();
            let (_, pem) = x509_parser::pem::parse_x509_pem(c.cert_pem.as_bytes()).unwrap();
            assert_eq!(
                peer_of(&pem.contents).unwrap(),
                Peer {
                    role,
                    name: "node-1".to_string(),
                    region: region.map(String::from)
                }
            );
        }
    }

    #[test]
    fn coordinator_and_edge_certificates_name_one_region_and_the_others_none() {
        let ca = ca();
        let days = || Validity::days(2).unwrap();
        let e = ca
            .issue(Role::Coordinator, "n", None, &[], days())
            .err()
            .unwrap();
        assert!(e.0.contains("must name its region"), "{e}");
        let e = ca.issue(Role::Edge, "e", None, &[], days()).err().unwrap();
        assert!(e.0.contains("must name its region"), "{e}");
        let e = ca
            .issue(Role::Operator, "o", Some("eu-1"), &[], days())
            .err()
            .unwrap();
        assert!(e.0.contains("names no region"), "{e}");
        // A coordinator certificate made without the region (by another tool) is refused too.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(Role::Coordinator.uri()).unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();
        let e = peer_of(cert.der()).unwrap_err();
        assert!(e.0.contains("must name its region"), "{e}");
        let c = ca
            .issue(Role::Coordinator, "n", Some("us-1"), &[], days())
            .unwrap();
        let t = Transport::from_pem(
            ca.cert_pem().as_bytes(),
            c.cert_pem.as_bytes(),
            c.key_pem.as_bytes(),
            &[Role::Coordinator],
        )
        .unwrap();
        assert_eq!(t.region(), Some("us-1"));
        assert_eq!(
            describe(c.cert_pem.as_bytes()).unwrap().region.as_deref(),
            Some("us-1")
        );
    }

    #[test]
    fn a_process_refuses_a_certificate_of_another_role() {
        let ca = ca();
        let c = ca
            .issue(
                Role::Edge,
                "edge-1",
                Some("eu-1"),
                &[],
                Validity::days(2).unwrap(),
            )
            .unwrap();
        let e = Transport::from_pem(
            ca.cert_pem().as_bytes(),
            c.cert_pem.as_bytes(),
            c.key_pem.as_bytes(),
            &[Role::Coordinator],
        )
        .unwrap_err();
        assert!(e.0.contains("grants the role edge"), "{e}");
        let t = Transport::from_pem(
            ca.cert_pem().as_bytes(),
            c.cert_pem.as_bytes(),
            c.key_pem.as_bytes(),
            &[Role::Edge],
        )
        .unwrap();
        assert_eq!(t.role(), Some(Role::Edge));
    }

    #[test]
    fn a_certificate_without_a_role_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let e = role_of(cert.der()).unwrap_err();
        assert!(e.0.contains("grants no role"), "{e}");
    }

    #[test]
    fn the_config_needs_certificates_or_the_plaintext_flag_not_both_nor_neither() {
        let none = TlsFiles::default();
        assert!(matches!(
            Transport::from_config(&none, true, &[]),
            Ok(Transport::Plaintext)
        ));
        let e = Transport::from_config(&none, false, &[]).unwrap_err();
        assert!(e.0.contains("--insecure-plaintext"), "{e}");
        let some = TlsFiles {
            ca_file: "/nonexistent/ca.pem".into(),
            ..TlsFiles::default()
        };
        let e = Transport::from_config(&some, true, &[]).unwrap_err();
        assert!(e.0.contains("choose one"), "{e}");
        let e = Transport::from_config(&some, false, &[]).unwrap_err();
        assert!(e.0.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn a_url_must_agree_with_the_transport() {
        let p = Transport::Plaintext;
        assert!(p.endpoint("127.0.0.1:7001").is_ok());
        assert!(p.endpoint("http://127.0.0.1:7001").is_ok());
        let e = p.endpoint("https://127.0.0.1:7001").unwrap_err();
        assert!(e.0.contains("does not match"), "{e}");
    }

    #[test]
    fn describe_shows_hosts_and_check_tells_the_signing_ca() {
        let (ca, other) = (ca(), ca());
        let c = ca
            .issue(
                Role::Coordinator,
                "eu-1-node-2",
                Some("eu-1"),
                &["10.0.0.2".into(), "node2.eu".into()],
                Validity::days(2).unwrap(),
            )
            .unwrap();
        let d = describe(c.cert_pem.as_bytes()).unwrap();
        assert_eq!(d.role, Role::Coordinator);
        assert_eq!(
            d.hosts,
            vec!["10.0.0.2".to_string(), "node2.eu".to_string()]
        );
        check_signed_by(c.cert_pem.as_bytes(), ca.cert_pem().as_bytes()).unwrap();
        let e = check_signed_by(c.cert_pem.as_bytes(), other.cert_pem().as_bytes()).unwrap_err();
        assert!(e.0.contains("did not sign"), "{e}");
    }

    #[test]
    fn a_loaded_authority_signs_like_the_one_that_was_created() {
        let ca = ca();
        let again = Authority::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        let c = again
            .issue(
                Role::Auditor,
                "audit",
                None,
                &[],
                Validity::days(1).unwrap(),
            )
            .unwrap();
        assert!(
            Transport::from_pem(
                ca.cert_pem().as_bytes(),
                c.cert_pem.as_bytes(),
                c.key_pem.as_bytes(),
                &[Role::Auditor],
            )
            .is_ok()
        );
    }
}
