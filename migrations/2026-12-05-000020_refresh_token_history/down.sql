DROP TABLE refresh_token_history;
