mod deploy;
mod distributed;
mod failures;
mod product;
mod refusals;
mod security;
