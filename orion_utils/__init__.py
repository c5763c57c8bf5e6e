"""orion_utils: all the logic behind the ORION reasoning-distillation notebooks."""
__version__ = "0.1.0"
