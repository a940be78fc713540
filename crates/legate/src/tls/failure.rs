//! What a failed TLS handshake means, as the short reason a client sees in `legate-error`
//! (`tls-unknown-ca`, `tls-hostname-mismatch`, …) and logs and metrics carry.

use rustls::{AlertDescription, CertificateError, Error, PeerIncompatible};

/// The rustls error inside an I/O error from a handshake, if there is one.
pub fn rustls_error(e: &std::io::Error) -> Option<&Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|e| e as _);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Error>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// The identity of a client whose certificate chained to the CA but is not on the allow list.
pub fn refused_identity(e: &std::io::Error) -> Option<String> {
    match rustls_error(e)? {
        Error::InvalidCertificate(CertificateError::Other(o)) => {
            o.0.downcast_ref::<super::identity::NotAllowed>()
                .map(|n| n.identity.clone())
        }
        _ => None,
    }
}

/// A short, stable reason for a handshake failure.
pub fn reason(e: &std::io::Error) -> &'static str {
    match rustls_error(e) {
        Some(r) => reason_of(r),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "tls-handshake-eof",
        None => "tls-handshake",
    }
}

pub fn reason_of(e: &Error) -> &'static str {
    match e {
        Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "tls-unknown-ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "tls-cert-expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "tls-cert-not-yet-valid"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "tls-hostname-mismatch"
            }
            CertificateError::Revoked => "tls-cert-revoked",
            CertificateError::Other(o) if o.0.downcast_ref::<PinMismatch>().is_some() => {
                "tls-pin-mismatch"
            }
            CertificateError::Other(o)
                if o.0.downcast_ref::<super::identity::NotAllowed>().is_some() =>
            {
                "tls-peer-not-allowed"
            }
            _ => "tls-bad-certificate",
        },
        Error::NoCertificatesPresented => "tls-no-client-cert",
        Error::AlertReceived(a) => match a {
            AlertDescription::ProtocolVersion => "tls-version-mismatch",
            AlertDescription::HandshakeFailure | AlertDescription::InsufficientSecurity => {
                "tls-no-shared-cipher"
            }
            AlertDescription::CertificateRequired => "tls-client-cert-required",
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied => "tls-client-cert-rejected",
            _ => "tls-alert",
        },
        Error::PeerIncompatible(p) => match p {
            PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::Tls13RequiredForQuic
            | PeerIncompatible::SupportedVersionsExtensionRequired => "tls-version-mismatch",
            PeerIncompatible::NoCipherSuitesInCommon => "tls-no-shared-cipher",
            _ => "tls-incompatible-peer",
        },
        Error::InvalidMessage(_) => "tls-protocol-error",
        _ => "tls-handshake",
    }
}

/// The server's key is not one of `pin_spki_sha256`.
#[derive(Debug, thiserror::Error)]
#[error("server public key (SPKI SHA-256 {got}) matches none of pin_spki_sha256")]
pub struct PinMismatch {
    pub got: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn io(e: Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn reasons() {
        assert_eq!(
            reason(&io(Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))),
            "tls-unknown-ca"
        );
        assert_eq!(
            reason(&io(Error::InvalidCertificate(
                CertificateError::NotValidForName
            ))),
            "tls-hostname-mismatch"
        );
        assert_eq!(
            reason(&io(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch { got: "x".into() }))
            )))),
            "tls-pin-mismatch"
        );
        assert_eq!(
            reason(&io(Error::AlertReceived(AlertDescription::ProtocolVersion))),
            "tls-version-mismatch"
        );
        assert_eq!(
            reason(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            "tls-handshake-eof"
        );
    }
}
