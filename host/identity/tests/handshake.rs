//! Real mTLS handshakes over loopback TCP with rustls, using the generated PKI.
//!
//! Shows that the generated leaves are accepted by webpki as both server and client
//! certificates, that the TLS layer rejects impostors, and that `TrustStore::identify`
//! maps the verified peer chain to the right principal.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use halo_identity::{
    DevPki, Identity, NO_AKID, Principal, TrustStore, identity_with_two_cert_chain,
    identity_without_akid, impostor_identity,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn roots(trust: &TrustStore) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trust.roots_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(roots)
}

fn key(id: &Identity) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap()
}

/// Serves one connection as `server` and returns what the server concluded about the client:
/// `Ok(resource name)` / `Err(status message)` from `identify`, or `Err("tls: ...")`.
/// The client side returns the line the server sent back (or an error).
fn handshake(
    server: &Identity,
    client: &Identity,
    trust: &TrustStore,
) -> (Result<String, String>, Result<String, String>) {
    halo_identity::init_crypto();
    let verifier = WebPkiClientVerifier::builder(roots(trust)).build().unwrap();
    let server_config = Arc::new(
        ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(server.chain_der().unwrap(), key(server))
            .unwrap(),
    );
    let client_config = Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots(trust))
            .with_client_auth_cert(client.chain_der().unwrap(), key(client))
            .unwrap(),
    );

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let trust = trust.clone();
    let server_thread = std::thread::spawn(move || -> Result<String, String> {
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let conn = ServerConnection::new(server_config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut line = String::new();
        BufReader::new(&mut tls)
            .read_line(&mut line)
            .map_err(|e| format!("tls: {e}"))?;
        let certs = tls.conn.peer_certificates().map(<[_]>::to_vec);
        let verdict = trust
            .identify(certs.as_deref())
            .map(|p| p.resource_name())
            .map_err(|s| s.message().to_owned());
        let reply = match &verdict {
            Ok(name) => format!("{name}\n"),
            Err(msg) => format!("denied: {msg}\n"),
        };
        tls.write_all(reply.as_bytes())
            .map_err(|e| format!("tls: {e}"))?;
        tls.conn.send_close_notify();
        tls.flush().map_err(|e| format!("tls: {e}"))?;
        verdict
    });

    let client_result = (|| -> Result<String, String> {
        let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let name = ServerName::try_from(halo_identity::TLS_DOMAIN).unwrap();
        let conn = ClientConnection::new(client_config, name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(b"hello\n").map_err(|e| format!("tls: {e}"))?;
        tls.flush().map_err(|e| format!("tls: {e}"))?;
        let mut line = String::new();
        BufReader::new(&mut tls)
            .read_line(&mut line)
            .map_err(|e| format!("tls: {e}"))?;
        Ok(line.trim_end().to_owned())
    })();
    (server_thread.join().unwrap(), client_result)
}

#[test]
fn mtls_handshakes() {
    let worker1 = Principal::Duchy("worker1".into());
    let edp1 = Principal::DataProvider("edp1".into());
    let pki = DevPki::generate(&[Principal::Kingdom, worker1.clone(), edp1.clone()]).unwrap();
    let trust = pki.trust_store().unwrap();
    let kingdom = pki.identity(&Principal::Kingdom).unwrap();

    // Genuine leaves: accepted and identified, in both roles.
    for p in [&worker1, &edp1] {
        let (server, client) = handshake(kingdom, pki.identity(p).unwrap(), &trust);
        assert_eq!(server.as_deref(), Ok(p.resource_name().as_str()));
        assert_eq!(client, Ok(p.resource_name()));
    }
    let (server, _) = handshake(pki.identity(&worker1).unwrap(), kingdom, &trust);
    assert_eq!(server.as_deref(), Ok("kingdom"));

    // Impostor: its root is not trusted, so the TLS layer rejects the client certificate.
    let impostor = impostor_identity(&worker1).unwrap();
    let (server, client) = handshake(kingdom, &impostor, &trust);
    assert!(
        server.as_ref().is_err_and(|e| e.starts_with("tls:")),
        "{server:?}"
    );
    assert!(client.is_err(), "{client:?}");

    // No AKID: the chain verifies (issuer name + signature) but identification fails.
    let no_akid = identity_without_akid(&pki, &worker1).unwrap();
    let (server, client) = handshake(kingdom, &no_akid, &trust);
    assert_eq!(server, Err(NO_AKID.to_owned()));
    assert_eq!(client, Ok(format!("denied: {NO_AKID}")));

    // Two-certificate chain: TLS accepts it, identification does not.
    let chained = identity_with_two_cert_chain(&pki, &edp1).unwrap();
    let (server, _) = handshake(kingdom, &chained, &trust);
    assert_eq!(
        server,
        Err(halo_identity::MULTIPLE_CLIENT_CERTIFICATES.to_owned())
    );
}
