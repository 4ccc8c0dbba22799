"""The user CLIs (pcontainer, pbook, pfit, phpo) and their one HTTP client."""
