-- 0001_users: people who place orders.
-- Forward-only: never edit an applied file; add a new numbered one instead.
CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email       text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- Emails are unique regardless of case: Ann@x.org and ann@x.org are one person.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
