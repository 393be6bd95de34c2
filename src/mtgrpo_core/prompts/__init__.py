"""Prompts: `pool` draws each step's prompts per task (with stand-ins for skipped ones), `history` remembers each
prompt's last outcome for selective rollouts."""
