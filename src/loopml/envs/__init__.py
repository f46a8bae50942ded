"""loopml.envs"""
