//! Who the users are: holders of the tokens the demo issues itself at
//! sign-up, or, with `--firebase-auth <project>`, of Firebase ID tokens.

use tower_tickets::TicketsBuilder;
use tower_tickets::identity::{JwtIdentity, JwtIssuer};

use crate::cli::IdentityArgs;

/// The `iss` and `aud` of the demo's own tokens, which it requires: a token
/// another service signed with the same secret is not one of the demo's.
const DEMO_TOKENS: &str = "tower-tickets-demo";

/// Puts the identity the flags ask for into `builder`; with it, the issuer
/// of the demo's own tokens, unless Firebase Auth issues them.
pub fn install(
    builder: TicketsBuilder,
    args: &IdentityArgs,
    jwt_secret: Option<String>,
) -> Result<(TicketsBuilder, Option<JwtIssuer>), String> {
    if let Some(project) = &args.firebase_auth {
        let builder = firebase(builder, project, args.firebase_keys_url.as_deref())?;
        return Ok((builder, None));
    }
    let secret = jwt_secret_or_random(jwt_secret);
    let verify = JwtIdentity::hs256(&secret)
        .issuer(DEMO_TOKENS)
        .audience(DEMO_TOKENS);
    let issuer = JwtIssuer::hs256(&secret)
        .issuer(DEMO_TOKENS)
        .audience(DEMO_TOKENS);
    Ok((builder.identity(verify), Some(issuer)))
}

/// The priced and balance routes take `project`'s Firebase ID tokens.
#[cfg(feature = "firebase")]
fn firebase(
    builder: TicketsBuilder,
    project: &str,
    keys_url: Option<&str>,
) -> Result<TicketsBuilder, String> {
    use tower_tickets::identity::FirebaseIdentity;

    let mut identity = FirebaseIdentity::builder(project);
    if let Some(url) = keys_url {
        identity = identity.keys_url(url);
    }
    let identity = identity
        .build()
        .map_err(|e| format!("--firebase-auth {project}: {e}"))?;
    tracing::info!(project, "users sign in with Firebase Auth");
    Ok(builder.identity(identity))
}

#[cfg(not(feature = "firebase"))]
fn firebase(
    _builder: TicketsBuilder,
    project: &str,
    _keys_url: Option<&str>,
) -> Result<TicketsBuilder, String> {
    Err(format!(
        "--firebase-auth {project}: this demo was built without the `firebase` feature; \
         rebuild it with --features firebase"
    ))
}

/// The secret that signs and verifies tokens: the one given, or a random one.
fn jwt_secret_or_random(given: Option<String>) -> Vec<u8> {
    match given {
        Some(secret) => secret.into_bytes(),
        None => {
            tracing::warn!(
                "no --jwt-secret given: using a random one, so tokens stop working when the \
                 server restarts (set --jwt-secret or TICKETS_JWT_SECRET to keep them)"
            );
            rand::random::<[u8; 32]>().to_vec()
        }
    }
}
