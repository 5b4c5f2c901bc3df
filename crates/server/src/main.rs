//! `ringline`: the calls server and its operator commands.
//!
//! `ringline` (or `ringline serve`) migrates the database and serves; the other subcommands
//! migrate, mint development tokens, provision users and conversations, and print the OpenAPI
//! document. Settings: `docs/configuration.md`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ringline_api::JwtAuthenticator;
use ringline_domain::{Clock, ConversationId, Directory, SystemClock, UserId, UserProfile};
use ringline_server::config_check::{self, ConfigCheck};
use ringline_server::settings::{Overrides, Settings};
use ringline_server::{Application, open_storage, telemetry};

#[derive(Debug, Parser)]
#[command(name = "ringline", version = env!("BUILD_VERSION_LINE"), about = "Ringline: a backend for one-to-one voice and video calls")]
struct Cli {
    /// A TOML settings file; `RINGLINE_*` environment variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Database URL (overrides RINGLINE_DATABASE_URL): sqlite://PATH?mode=rwc or postgres://…
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Address to listen on (overrides RINGLINE_BIND).
    #[arg(long, global = true)]
    bind: Option<std::net::SocketAddr>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate the database, then serve until SIGINT or SIGTERM (the default).
    Serve,
    /// Create demo users (Ada, Grace, Alan, Katherine) and a conversation, then serve. Open
    /// http://127.0.0.1:8000 in two windows, sign in as two of them, and call.
    Demo,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print an access token for a user, signed with the configured secret.
    Token {
        /// The user id the token speaks for.
        #[arg(long)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
    /// Manage the standalone server's users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Manage the standalone server's conversations.
    Conversations {
        #[command(subcommand)]
        command: ConversationsCommand,
    },
    /// Print the OpenAPI document (JSON).
    Openapi,
    /// Read the settings as `serve` would, print them (secrets redacted) and every problem;
    /// exit 1 if the server would not start.
    CheckConfig {
        /// Print only the problems.
        #[arg(long)]
        quiet: bool,
    },
    /// Print a settings file (TOML) of every setting, commented, with its default.
    ConfigTemplate,
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Create a user, or update the profile of an existing one.
    Add {
        id: String,
        #[arg(long)]
        username: String,
        #[arg(long, default_value = "")]
        first_name: String,
        #[arg(long, default_value = "")]
        last_name: String,
        #[arg(long)]
        profile_image_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConversationsCommand {
    /// Create a conversation, or add participants to an existing one.
    Add {
        id: i64,
        /// Comma-separated user ids; each must be a known user.
        #[arg(long, value_delimiter = ',', required = true)]
        participants: Vec<String>,
    },
}

/// mimalloc rather than glibc's malloc: a request allocates and frees many small objects on
/// two worker threads, where glibc spent about a sixth of the server's CPU in the call-cycle
/// profile (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let overrides = Overrides { bind: cli.bind, database_url: cli.database_url.clone() };
    // These two judge or describe settings, so they run before (and whatever) the settings are.
    match &cli.command {
        Some(Command::CheckConfig { quiet }) => {
            let check = ConfigCheck::run(cli.config.as_deref(), overrides);
            print!("{}", check.render(*quiet));
            std::process::exit(if check.passed() { 0 } else { 1 });
        }
        Some(Command::ConfigTemplate) => {
            print!("{}", config_check::template());
            return Ok(());
        }
        _ => {}
    }
    let settings = Settings::load(cli.config.as_deref(), overrides)?;
    telemetry::init(settings.process.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let application = Application::build(settings).await?;
            let listener = application.listen().await?;
            application.run(listener, telemetry::shutdown_signal()).await
        }
        Command::Demo => {
            anyhow::ensure!(
                settings.process.env != ringline_server::settings::Environment::Production,
                "`ringline demo` is for trying Ringline locally; it refuses RINGLINE_ENV=production"
            );
            let storage = open_storage(&settings).await?;
            seed_demo(&storage).await?;
            storage.close().await.context("closing the database")?;
            if settings.auth.jwt_secret.is_some() {
                tracing::warn!(
                    "RINGLINE_JWT_SECRET is set: demo sign-in stays off; paste tokens from `ringline token`"
                );
            }
            // Bound before saying where to go: an address in use fails here, with how to pick another.
            let application = Application::build(settings).await?;
            let listener = application.listen().await?;
            let address = listener.local_socket_addr().context("the listener has no socket address")?;
            tracing::info!(url = %format!("http://{address}"), "demo users ready: open the URL in two windows");
            application.run(listener, telemetry::shutdown_signal()).await
        }
        Command::Migrate => {
            let storage = open_storage(&settings).await?;
            tracing::info!(backend = storage.backend_name(), "migrations applied");
            storage.close().await.context("closing the database")
        }
        Command::Token { user, ttl } => {
            let user = UserId::parse(user).context("invalid --user")?;
            let (secret, _) = settings.jwt_secret_or_default();
            let authenticator =
                JwtAuthenticator::new(&secret, settings.auth.jwt_user_claim.clone(), Arc::new(SystemClock));
            println!("{}", authenticator.mint(&user, Duration::from_secs(ttl)).context("signing the token")?);
            Ok(())
        }
        Command::Users { command: UsersCommand::Add { id, username, first_name, last_name, profile_image_url } } => {
            let storage = open_storage(&settings).await?;
            let profile = UserProfile {
                id: UserId::parse(id).context("invalid user id")?,
                username,
                first_name,
                last_name,
                profile_image_url,
            };
            storage.directory().upsert_user(&profile, SystemClock.now()).await?;
            println!("user {} saved", profile.id);
            storage.close().await.context("closing the database")
        }
        Command::Conversations { command: ConversationsCommand::Add { id, participants } } => {
            let storage = open_storage(&settings).await?;
            let id = ConversationId::new(id).context("invalid conversation id")?;
            let participants = participants
                .into_iter()
                .map(UserId::parse)
                .collect::<Result<Vec<_>, _>>()
                .context("invalid participant id")?;
            let directory = storage.directory();
            if directory.conversation_participants(id).await?.is_some() {
                directory.add_participants(id, &participants).await?;
            } else {
                directory.set_conversation(id, &participants, SystemClock.now()).await?;
            }
            println!("conversation {id} saved");
            storage.close().await.context("closing the database")
        }
        Command::Openapi => {
            println!("{}", ringline_server::openapi_document().await?);
            Ok(())
        }
        // Answered above, before the settings were read.
        Command::CheckConfig { .. } | Command::ConfigTemplate => Ok(()),
    }
}

/// The demo users and their shared conversation (id 1). Idempotent.
async fn seed_demo(storage: &ringline_storage::Storage) -> anyhow::Result<()> {
    let directory = storage.directory();
    let people = [
        ("ada", "Ada", "Lovelace"),
        ("grace", "Grace", "Hopper"),
        ("alan", "Alan", "Turing"),
        ("katherine", "Katherine", "Johnson"),
    ];
    let mut ids = Vec::new();
    for (id, first_name, last_name) in people {
        let profile = UserProfile {
            id: UserId::parse(id).context("demo ids are valid")?,
            username: id.to_owned(),
            first_name: first_name.to_owned(),
            last_name: last_name.to_owned(),
            profile_image_url: None,
        };
        directory.upsert_user(&profile, SystemClock.now()).await?;
        ids.push(profile.id);
    }
    directory.set_conversation(ConversationId::new(1).context("positive")?, &ids, SystemClock.now()).await?;
    Ok(())
}
