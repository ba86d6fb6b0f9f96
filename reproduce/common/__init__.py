"""What the commands share: flags and exits, placement on devices, restoring a net, figures, locks."""
