//! [`Accounts`]: whether the user a valid token names may still use the service.
//!
//! A signed token outlives its user: simplejwt refuses the tokens of users that no longer exist
//! or are inactive, and so must Ringline, on every request and every socket, without a database
//! read each time (a read per socket connect was a third of a connect's CPU, and filled the
//! database's page cache with the users table). So two things are kept in memory:
//! - the users the directory refuses (removed or inactive): all of them, read at start and
//!   again every [`Accounts::RELOAD_EVERY`] (for changes made outside Ringline), and changed at
//!   once by every removal, deactivation or restore made through Ringline, on every instance
//!   (the signal router carries [`Accounts::changed`] to the others). A token whose user is
//!   not among them needs nothing more when it cannot register anyone;
//! - the users found active, for [`Accounts::FRESH_FOR`], for the authentications that must
//!   tell an active user from an unknown one (first-use registration, or none allowed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::ports::{Clock, Directory, DirectoryError};
use crate::values::{Timestamp, UserId};

/// What the directory says of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// Known and allowed in.
    Active,
    /// Known, but turned off by the operator (`is_active` false): refused, and kept.
    Inactive,
    /// Deleted: refused, and never registered again from a token.
    Removed,
    /// Never known: a token may register them (first-use registration), if allowed.
    Unknown,
}

impl AccountStatus {
    /// Whether the user's tokens are refused.
    pub fn is_refused(self) -> bool {
        matches!(self, Self::Inactive | Self::Removed)
    }
}

/// The account check of every authentication (see the module documentation).
#[derive(Debug)]
pub struct Accounts {
    directory: Arc<dyn Directory>,
    clock: Arc<dyn Clock>,
    remembered: Mutex<Remembered>,
}

#[derive(Debug, Default)]
struct Remembered {
    /// Every user the directory refuses, as of the last reload and the changes since.
    refused: HashMap<UserId, AccountStatus>,
    /// Users found active, and when.
    active: HashMap<UserId, Timestamp>,
    /// Bumped by every change: a read that began before one must not store what it read (it
    /// may predate the change).
    generation: u64,
}

impl Accounts {
    /// How long a user found active is believed without asking again.
    pub const FRESH_FOR: Duration = Duration::from_secs(10);

    /// How often the refused users are read again, for changes made outside Ringline.
    pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

    /// Active users remembered at most; past it the memory starts over (a read each, once).
    const MAX_REMEMBERED: usize = 100_000;

    pub fn new(directory: Arc<dyn Directory>, clock: Arc<dyn Clock>) -> Self {
        Self { directory, clock, remembered: Mutex::default() }
    }

    /// Why `user` is refused, if the directory refuses them, from memory.
    pub fn refused(&self, user: &UserId) -> Option<AccountStatus> {
        self.lock().refused.get(user).copied()
    }

    /// `user`'s account status: refused or recently active from memory, else read from the
    /// directory.
    ///
    /// # Errors
    /// [`DirectoryError`] when the directory cannot be read.
    pub async fn status(&self, user: &UserId) -> Result<AccountStatus, DirectoryError> {
        let now = self.clock.now();
        let generation = {
            let remembered = self.lock();
            if let Some(refused) = remembered.refused.get(user) {
                return Ok(*refused);
            }
            if remembered.active.get(user).is_some_and(|seen| now.minus(Self::FRESH_FOR) < *seen) {
                return Ok(AccountStatus::Active);
            }
            remembered.generation
        };
        let status = self.directory.account_status(user).await?;
        let mut remembered = self.lock();
        if remembered.generation == generation {
            match status {
                AccountStatus::Active => {
                    if remembered.active.len() >= Self::MAX_REMEMBERED {
                        remembered.active.clear();
                    }
                    remembered.active.insert(user.clone(), now);
                }
                refused if refused.is_refused() => {
                    remembered.refused.insert(user.clone(), refused);
                }
                _ => {}
            }
        }
        Ok(status)
    }

    /// `user`'s account is now `status` (a removal, deactivation or restore, here or on
    /// another instance).
    pub fn changed(&self, user: &UserId, status: AccountStatus) {
        let mut remembered = self.lock();
        remembered.active.remove(user);
        if status.is_refused() {
            remembered.refused.insert(user.clone(), status);
        } else {
            remembered.refused.remove(user);
        }
        remembered.generation += 1;
    }

    /// Reads every refused user again (at start, then every [`Accounts::RELOAD_EVERY`]). A
    /// reload that a change overtook is dropped: the next one brings it.
    ///
    /// # Errors
    /// [`DirectoryError`] when the directory cannot be read; what was known stays.
    pub async fn reload(&self) -> Result<(), DirectoryError> {
        let generation = self.lock().generation;
        let refused = self.directory.refused_accounts().await?;
        let mut remembered = self.lock();
        if remembered.generation == generation {
            remembered.refused = refused.into_iter().filter(|(_, status)| status.is_refused()).collect();
            // What was active may have been refused outside Ringline: asked again when due.
        }
        Ok(())
    }

    // A poisoned lock means a panic while holding it; the maps are still valid (single
    // inserts and removals), so keep serving.
    fn lock(&self) -> MutexGuard<'_, Remembered> {
        self.remembered.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
