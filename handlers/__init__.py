"""The chat surface: command grammar, listeners, Block Kit rendering, the notification presenter."""
