//! `meridian cache purge`: removes an app's responses from every edge's cache, by URL, by tag
//! or all of them, and says what was accepted and how many connected edges applied it.

use anyhow::Result;
use clap::{Args, Subcommand};
use meridian_model::{PurgeAccepted, PurgeRequest, PurgeTarget};
use reqwest::Method;

use crate::client::Client;
use crate::output::Format;

use super::resources::default_org;

/// `meridian cache …`
#[derive(Subcommand)]
pub enum CacheCommand {
    /// Remove an app's responses from every edge's cache: those of one URL, those its origin
    /// tagged so (Cache-Tag or Surrogate-Key), or all of them.
    ///
    /// The purge is stored and numbered, then sent to every edge; the command returns once
    /// every connected edge applied it, or after about 5 seconds with how many did. An edge
    /// away from the control plane applies what it missed as soon as it is back (or purges
    /// everything it holds if it missed more than the newest 10,000 purges).
    Purge(PurgeArgs),
}

/// Options of `meridian cache purge`.
#[derive(Args)]
pub struct PurgeArgs {
    /// The app whose cached responses go.
    #[arg(long)]
    app: String,
    /// The org; defaults to the context's, else the token's org (an admin token must name it).
    #[arg(long, env = "MERIDIAN_ORG")]
    org: Option<String>,
    #[command(flatten)]
    what: PurgeWhat,
}

/// What a purge removes: exactly one.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct PurgeWhat {
    /// The responses stored for this absolute URL (http:// or https://, both schemes go),
    /// whose host is one of the app's domains: e.g. https://shop.example.com/products/7
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// The responses the app's origin tagged so in Cache-Tag or Surrogate-Key.
    #[arg(long, value_name = "TAG")]
    tag: Option<String>,
    /// Every response of the app.
    #[arg(long)]
    all: bool,
}

impl PurgeWhat {
    /// The API's request.
    fn request(&self) -> PurgeRequest {
        PurgeRequest {
            url: self.url.clone(),
            tag: self.tag.clone(),
            all: self.all.then_some(true),
        }
    }
}

/// Runs `meridian cache …`.
pub async fn cache(api: &Client, format: Format, cmd: CacheCommand) -> Result<()> {
    let CacheCommand::Purge(args) = cmd;
    let org = default_org(api, args.org.clone()).await?;
    let path = format!("/v1/orgs/{org}/apps/{}/purges", args.app);
    let body = serde_json::to_value(args.what.request())?;
    let accepted: PurgeAccepted = api.send(Method::POST, &path, &body).await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&accepted)?),
        Format::Table => print!("{}", summary(&accepted)),
    }
    Ok(())
}

/// What a person reads of an accepted purge.
fn summary(accepted: &PurgeAccepted) -> String {
    let purge = &accepted.purge;
    let what = match &purge.target {
        PurgeTarget::Url(url) => format!("URL {url}"),
        PurgeTarget::Tag(tag) => format!("tag `{tag}`"),
        PurgeTarget::All => "everything".to_owned(),
    };
    let edges = match accepted.edges {
        Some(acks) if acks.connected == 0 => "no edge is connected now; each applies it when it \
            connects"
            .to_owned(),
        Some(acks) if acks.applied == acks.connected => {
            format!("applied by every connected edge ({})", acks.applied)
        }
        Some(acks) => format!(
            "applied by {} of {} connected edges so far; the others apply it when they can",
            acks.applied, acks.connected
        ),
        None => "sent to the edges (the control plane did not say how they took it)".to_owned(),
    };
    format!(
        "purge {} accepted: {what} of app {}/{} (domains {})\n{edges}\n",
        purge.sequence,
        purge.org,
        purge.app,
        accepted.domains.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use meridian_model::{EdgeAcks, Purge};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cache: CacheCommand,
    }

    fn parse(args: &[&str]) -> Result<PurgeRequest, clap::Error> {
        let all = [&["cache", "purge", "--app", "shop"], args].concat();
        Cli::try_parse_from(all).map(|cli| {
            let CacheCommand::Purge(purge) = cli.cache;
            purge.what.request()
        })
    }

    #[test]
    fn a_purge_names_exactly_one_of_url_tag_or_all() {
        let tag = parse(&["--tag", "catalog"]).unwrap();
        assert_eq!(tag.tag.as_deref(), Some("catalog"));
        assert_eq!(parse(&["--all"]).unwrap().all, Some(true));
        let url = parse(&["--url", "https://shop.example.com/a"]).unwrap();
        assert_eq!((url.url.is_some(), url.all), (true, None));
        for bad in [
            &[][..],
            &["--all", "--tag", "t"],
            &["--url", "u", "--tag", "t"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_summary_says_what_went_and_how_the_edges_took_it() {
        let mut accepted = PurgeAccepted {
            purge: Purge {
                sequence: 7,
                org: "acme".into(),
                app: "shop".into(),
                target: PurgeTarget::Tag("catalog".into()),
                created_at: 0,
            },
            domains: vec!["shop.example.com".into()],
            edges: Some(EdgeAcks {
                connected: 2,
                applied: 2,
            }),
        };
        assert_eq!(
            summary(&accepted),
            "purge 7 accepted: tag `catalog` of app acme/shop (domains shop.example.com)\n\
             applied by every connected edge (2)\n"
        );
        accepted.edges = Some(EdgeAcks {
            connected: 2,
            applied: 1,
        });
        assert!(summary(&accepted).contains("applied by 1 of 2 connected edges so far"));
    }
}
