//! `rtprelay-ctl`: a small command-line client for rtprelay's gRPC API, for operators and for
//! trying the relay out by hand. Output is the JSON-like debug form of the gRPC replies.

use clap::{Parser, Subcommand};
use rtprelay_proto::v1;
use rtprelay_proto::v1::relay_client::RelayClient;
use tokio_stream::StreamExt;

#[derive(Parser)]
#[command(
    name = "rtprelay-ctl",
    version,
    about = "Control a running rtprelay over gRPC"
)]
struct Cli {
    /// The relay's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "RTPRELAY_GRPC")]
    server: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a UDP session: media to LISTEN is sent from CONNECT to DESTINATION (and back).
    Create {
        id: String,
        /// ADDRESS:PORT the client sends to (port 0 = allocate).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// ADDRESS:PORT outbound media is sent from (port 0 = allocate).
        #[arg(long, default_value = "127.0.0.1:0")]
        connect: String,
        /// ADDRESS:PORT media is sent to.
        #[arg(long)]
        destination: String,
    },
    /// Destroy a session and print its final counters.
    Destroy { id: String },
    /// Print one session's status.
    Status { id: String },
    /// List sessions.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Print session events as they happen (Ctrl-C to stop).
    Watch { ids: Vec<String> },
    /// Print relay-wide figures.
    Stats,
}

fn endpoint(s: &str) -> anyhow::Result<v1::Endpoint> {
    let (address, port) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{s:?} is not ADDRESS:PORT"))?;
    let address = address.trim_start_matches('[').trim_end_matches(']');
    Ok(v1::Endpoint {
        address: address.to_owned(),
        port: port.parse()?,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut client = RelayClient::connect(cli.server.clone()).await?;
    match cli.cmd {
        Cmd::Create {
            id,
            listen,
            connect,
            destination,
        } => {
            let req = v1::CreateSessionRequest {
                session_id: id,
                listen: Some(endpoint(&listen)?),
                connect: Some(endpoint(&connect)?),
                destination: Some(endpoint(&destination)?),
                protocol: v1::Protocol::Udp as i32,
                options: None,
            };
            println!("{:#?}", client.create_session(req).await?.into_inner());
        }
        Cmd::Destroy { id } => {
            let req = v1::DestroySessionRequest { session_id: id };
            println!("{:#?}", client.destroy_session(req).await?.into_inner());
        }
        Cmd::Status { id } => {
            let req = v1::GetSessionStatusRequest { session_id: id };
            println!("{:#?}", client.get_session_status(req).await?.into_inner());
        }
        Cmd::List { prefix } => {
            let mut token = String::new();
            loop {
                let req = v1::ListSessionsRequest {
                    page_size: 0,
                    page_token: token,
                    id_prefix: prefix.clone(),
                };
                let page = client.list_sessions(req).await?.into_inner();
                for s in &page.sessions {
                    println!("{:#?}", s);
                }
                if page.next_page_token.is_empty() {
                    println!("total: {}", page.total);
                    break;
                }
                token = page.next_page_token;
            }
        }
        Cmd::Watch { ids } => {
            let mut events = client
                .watch_events(v1::WatchEventsRequest { session_ids: ids })
                .await?
                .into_inner();
            while let Some(event) = events.next().await {
                println!("{:#?}", event?);
            }
        }
        Cmd::Stats => {
            println!(
                "{:#?}",
                client
                    .get_relay_stats(v1::GetRelayStatsRequest {})
                    .await?
                    .into_inner()
            );
        }
    }
    Ok(())
}
