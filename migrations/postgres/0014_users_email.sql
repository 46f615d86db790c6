-- Email-code sign-in finds the account by its verified address (case-insensitively).
CREATE INDEX users_view_email ON users_view (lower(email));
