"""loopml.registry"""
