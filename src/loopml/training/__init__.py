"""loopml.training"""
