"""The probe guests, one module per area; each exports ``DEVIATIONS``."""
