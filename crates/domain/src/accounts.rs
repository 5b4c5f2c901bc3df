//! [`Accounts`]: whether the user a valid token names may still use the service.
//!
//! A signed token outlives its user: simplejwt refuses the tokens of users that no longer exist
//! or are inactive, and so must Ringline, on every request and every socket. Asking the
//! directory each time would add a database read to every request, so the users found active
//! are remembered for [`Accounts::FRESH_FOR`]; a removal or deactivation made through Ringline
//! forgets the user at once, on every instance (the signal router tells the others), and the
//! time limit bounds what a change made elsewhere (directly in the database) may take.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
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

/// The account check of every authentication, with the active users remembered (see the
/// module documentation).
#[derive(Debug)]
pub struct Accounts {
    directory: Arc<dyn Directory>,
    clock: Arc<dyn Clock>,
    remembered: Mutex<Remembered>,
}

#[derive(Debug, Default)]
struct Remembered {
    /// Users found active, and when.
    active: HashMap<UserId, Timestamp>,
    /// Bumped by every [`Accounts::forget`]: a lookup that began before it must not remember
    /// what it read (it may predate the removal).
    generation: u64,
}

impl Accounts {
    /// How long a user found active is believed without asking again.
    pub const FRESH_FOR: Duration = Duration::from_secs(10);

    /// Users remembered at most; past it the memory starts over (a read each, once).
    const MAX_REMEMBERED: usize = 100_000;

    pub fn new(directory: Arc<dyn Directory>, clock: Arc<dyn Clock>) -> Self {
        Self { directory, clock, remembered: Mutex::default() }
    }

    /// `user`'s account status: remembered, or read from the directory.
    ///
    /// # Errors
    /// [`DirectoryError`] when the directory cannot be read.
    pub async fn status(&self, user: &UserId) -> Result<AccountStatus, DirectoryError> {
        let now = self.clock.now();
        let generation = {
            let remembered = self.lock();
            if remembered.active.get(user).is_some_and(|seen| now.minus(Self::FRESH_FOR) < *seen) {
                return Ok(AccountStatus::Active);
            }
            remembered.generation
        };
        let status = self.directory.account_status(user).await?;
        if status == AccountStatus::Active {
            let mut remembered = self.lock();
            if remembered.generation == generation {
                if remembered.active.len() >= Self::MAX_REMEMBERED {
                    remembered.active.clear();
                }
                remembered.active.insert(user.clone(), now);
            }
        }
        Ok(status)
    }

    /// Forgets that `user` was active: the next authentication asks the directory.
    pub fn forget(&self, user: &UserId) {
        let mut remembered = self.lock();
        remembered.active.remove(user);
        remembered.generation += 1;
    }

    // A poisoned lock means a panic while holding it; the map is still valid (single inserts
    // and removals), so keep serving.
    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.remembered.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
